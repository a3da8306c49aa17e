"""The tested model's robustness curve (:mod:`lightning_fusion.evaluation.robustness`) on its own test set.

Run by rank 0 after ``trainer.test``, with the tested (best) weights the module then holds: the test
loader's batches, on the Trainer's device and under its precision (so fraction 0 is the tested
predictions), each batch encoded once and fused under every masking condition
(:func:`~lightning_fusion.explain.masked.masked_probabilities`). Only for runs with
``data.keep_missing_modalities`` and several modalities: the model was trained to predict without a
modality, so masking one asks it something it was built for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.evaluation.robustness import robustness_curve
from lightning_fusion.explain.masked import masked_probabilities
from lightning_fusion.lit import FusionLitModule


def wants_robustness(module: FusionLitModule) -> bool:
    """Whether a tested run gets a robustness curve: ``data.keep_missing_modalities`` and several modalities."""
    return module.experiment_config.data.keep_missing_modalities and len(module.modalities) > 1


def tested_robustness(
    trainer: L.Trainer, module: FusionLitModule, datamodule: MultimodalDataModule, seed: int
) -> list[dict[str, Any]]:
    """The tested model's robustness rows (:func:`~lightning_fusion.evaluation.robustness.robustness_curve`)."""
    test = datamodule.datasets["test"]
    modalities = list(module.modalities)

    def predict(flag_sets: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
        masks = torch.from_numpy(np.stack([np.stack([f[m] for m in modalities], axis=1) for f in flag_sets]))
        probs = np.zeros((len(flag_sets), len(test), len(module.classes)))
        original = module.device
        module.to(trainer.strategy.root_device)
        try:
            with trainer.precision_plugin.forward_context():
                for batch in datamodule.test_dataloader():
                    rows = batch["index"].numpy()
                    probs[:, rows] = (
                        masked_probabilities(module, batch, masks[:, torch.from_numpy(rows)]).double().cpu().numpy()
                    )
        finally:
            module.to(original)
        return list(probs)

    return robustness_curve(test.labels, predict, test.present, modalities, seed=seed)
