"""Typed experiment configuration: plain dataclasses, YAML files, dotted command-line overrides.

An experiment is a tree of dataclasses (:class:`ExperimentConfig` at the root), built from YAML and
``--section.key value`` overrides and checked completely before anything runs:

* :mod:`~lightning_fusion.config.schema`: the sections, their fields (documented by their comments)
  and each section's own checks;
* :mod:`~lightning_fusion.config.components`: a reader, encoder or fusion chosen by name, resolved
  once into a :class:`Component` (name, typed options, registry metadata);
* :mod:`~lightning_fusion.config.rules`: the cross-field rules, checked at resolve;
* :mod:`~lightning_fusion.config.building`: loading, overriding, resolving, and back to plain data;
* :mod:`~lightning_fusion.config.help`: the config part of the commands' ``--help``.

A resolved config is complete and reproducible on its own: :func:`to_dict` is what the
LightningModule stores as hyperparameters, and ``resolve(to_dict(config)) == config``.
"""

from lightning_fusion.config.building import (
    apply_overrides,
    deep_merge,
    defaults,
    evolve,
    flatten,
    load_config,
    load_yaml,
    parse_override_value,
    resolve,
    to_dict,
    to_yaml,
)
from lightning_fusion.config.components import Component, build_dataclass, resolve_component
from lightning_fusion.config.rules import RULES, check_rules
from lightning_fusion.config.schema import (
    AugmentConfig,
    DataConfig,
    EvaluationConfig,
    ExperimentConfig,
    HeadConfig,
    ModelConfig,
    OptimConfig,
    SignalConfig,
    SplitConfig,
    TabularConfig,
    TrackingConfig,
    TrainerConfig,
)
from lightning_fusion.errors import ConfigError, UnknownNameError

__all__ = [
    "RULES",
    "AugmentConfig",
    "Component",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "HeadConfig",
    "ModelConfig",
    "OptimConfig",
    "SignalConfig",
    "SplitConfig",
    "TabularConfig",
    "TrackingConfig",
    "TrainerConfig",
    "UnknownNameError",
    "apply_overrides",
    "build_dataclass",
    "check_rules",
    "deep_merge",
    "defaults",
    "evolve",
    "flatten",
    "load_config",
    "load_yaml",
    "parse_override_value",
    "resolve",
    "resolve_component",
    "to_dict",
    "to_yaml",
]
