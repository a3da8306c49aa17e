"""Cross-field rules: what a config must satisfy across sections and components, checked at resolve.

A section checks its own values in ``__post_init__`` and a component's options dataclass checks its
options; a rule here involves several keys or a component's registry metadata (a fusion's
``supports_missing`` and ``min_modalities``). Every rule depends on the config alone, so a bad
combination is a :class:`ConfigError` before any data is read; each message names the dotted keys
and the choices that would work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lightning_fusion.config.components import registry
from lightning_fusion.errors import ConfigError

if TYPE_CHECKING:
    from lightning_fusion.config.schema import ExperimentConfig


def _masking_fusions() -> str:
    return ", ".join(registry("fusion").names(supports_missing=True))


def every_modality_has_an_encoder(config: ExperimentConfig) -> None:
    """Each of ``model.modalities`` has an entry in ``model.encoders``."""
    model = config.model
    for modality in model.modalities:
        if modality not in model.encoders:
            raise ConfigError(
                f"model.modalities: modality {modality!r} has no encoder in model.encoders (it has "
                f"{sorted(model.encoders)}); add model.encoders.{modality}: {{name: <encoder>}} with one of "
                f"{', '.join(registry('encoder').names())}"
            )


def fusion_takes_that_many_modalities(config: ExperimentConfig) -> None:
    """``model.modalities`` has at least the fusion's ``min_modalities``."""
    model = config.model
    needed = model.fusion.metadata.get("min_modalities", 1)
    if len(model.modalities) < needed:
        fusions = registry("fusion")
        fitting = [n for n in fusions.names() if fusions.metadata(n).get("min_modalities", 1) <= len(model.modalities)]
        raise ConfigError(
            f"model.fusion: {model.fusion.name!r} needs at least {needed} modalities, got {model.modalities} "
            f"(model.modalities); with {len(model.modalities)} use {', '.join(fitting) or 'none'}"
        )


def kept_missing_modalities_need_a_masking_fusion(config: ExperimentConfig) -> None:
    """``data.keep_missing_modalities`` (with several modalities) needs a fusion with ``supports_missing``."""
    fusion = config.model.fusion
    if (
        config.data.keep_missing_modalities
        and len(config.model.modalities) > 1
        and not fusion.metadata.get("supports_missing")
    ):
        raise ConfigError(
            f"data.keep_missing_modalities: model.fusion {fusion.name!r} cannot handle a missing modality; use "
            f"one that masks it ({_masking_fusions()}) or set it false"
        )


def modality_dropout_needs_a_masking_fusion(config: ExperimentConfig) -> None:
    """``model.modality_dropout`` > 0 needs a fusion with ``supports_missing``."""
    model = config.model
    if model.modality_dropout > 0 and not model.fusion.metadata.get("supports_missing", False):
        raise ConfigError(
            f"model.modality_dropout {model.modality_dropout}: model.fusion {model.fusion.name!r} cannot handle "
            "missing modalities, so modalities cannot be dropped in training; use a fusion that supports them "
            f"({_masking_fusions()}) or set model.modality_dropout 0"
        )


def temperature_scaling_needs_one_process(config: ExperimentConfig) -> None:
    """``evaluation.temperature_scaling`` fits on predictions gathered in one process."""
    if config.evaluation.temperature_scaling and config.trainer.several_processes:
        raise ConfigError(
            "evaluation.temperature_scaling fits on validation predictions gathered in one process; "
            "set trainer.devices 1 (or turn temperature scaling off for a DDP run)"
        )


def backbone_warmup_needs_one_process(config: ExperimentConfig) -> None:
    """An encoder's ``warmup_epochs`` > 0 (two-phase fine-tuning) needs one training process.

    ``trainer.devices: auto`` counts as one here; on a multi-GPU machine the warm-up callback still
    refuses at the start of training.
    """
    if not config.trainer.several_processes:
        return
    for modality in config.model.modalities:
        warmup = getattr(config.model.encoders[modality].options, "warmup_epochs", 0)
        if warmup > 0:
            raise ConfigError(
                f"model.encoders.{modality}.warmup_epochs {warmup}: two-phase fine-tuning does not work with "
                "multi-process DDP (parameters unfrozen after DDP wraps the model are never synchronised); set "
                "trainer.devices 1 (num_nodes 1, strategy auto), or warmup_epochs 0 with a fixed unfreeze_from"
            )


def schedule_and_loss_are_registered(config: ExperimentConfig) -> None:
    """``optim.schedule`` and ``optim.loss`` name registered ones (checked here: their registries import torch)."""
    from lightning_fusion.errors import UnknownNameError
    from lightning_fusion.losses import LOSSES
    from lightning_fusion.schedules import SCHEDULES

    for key, names in (("schedule", SCHEDULES), ("loss", LOSSES)):
        try:
            names.entry(getattr(config.optim, key))
        except UnknownNameError as err:
            raise ConfigError(f"optim.{key}: {err}") from None


def balanced_sampler_replaces_class_weights(config: ExperimentConfig) -> None:
    """``data.sampler: balanced`` already balances the classes; class weights on top would count them twice."""
    if config.data.sampler == "balanced" and config.optim.class_weights:
        raise ConfigError(
            "data.sampler balanced draws every class equally often, so optim.class_weights true would weight the "
            "rare classes twice; set optim.class_weights false with it (or data.sampler shuffle)"
        )


RULES: tuple[Callable[[ExperimentConfig], None], ...] = (
    every_modality_has_an_encoder,
    fusion_takes_that_many_modalities,
    kept_missing_modalities_need_a_masking_fusion,
    modality_dropout_needs_a_masking_fusion,
    temperature_scaling_needs_one_process,
    backbone_warmup_needs_one_process,
    schedule_and_loss_are_registered,
    balanced_sampler_replaces_class_weights,
)


def check_rules(config: ExperimentConfig) -> None:
    """Run every rule in :data:`RULES`; the first broken one raises :class:`ConfigError`."""
    for rule in RULES:
        rule(config)
