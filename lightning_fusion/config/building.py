"""From plain data to a checked :class:`~lightning_fusion.config.schema.ExperimentConfig`, and back.

YAML files and ``--section.key value`` overrides are merged as plain dicts, laid over the schema's
defaults and built into the dataclasses: each value is coerced to its field's type, components are
resolved into :class:`~lightning_fusion.config.components.Component` objects, each section checks
its own values and then the cross-field rules (:mod:`lightning_fusion.config.rules`) run. An unknown
key, a wrong type or a bad value raises :class:`ConfigError` naming the dotted key and the closest
valid keys. :func:`to_dict` turns a config back into plain data (what the LightningModule stores in
its checkpoint), and ``resolve(to_dict(config)) == config``.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lightning_fusion.config.components import Component, build_dataclass, registered_kind
from lightning_fusion.config.rules import check_rules
from lightning_fusion.config.schema import ExperimentConfig
from lightning_fusion.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Building dataclasses from plain data
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Loading, overriding, resolving
# --------------------------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override_value(text: str) -> Any:
    """Parse a command-line value as YAML (``[a,b]``, ``null``, ``true``, ``3``), else keep the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted ``a.b.c`` key set to its value."""
    merged = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = merged
        keys = dotted.split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--{dotted}: {key!r} holds {child!r}, not a section")
            node = child
        node[keys[-1]] = value
    return merged


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def defaults(cls: type = ExperimentConfig) -> dict[str, Any]:
    """The schema's defaults as plain data; a component's default is its ``{name, ...options}`` as written.

    Built without the registries (so without importing torch): a component field keeps its default
    in its metadata.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    plain: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "default" in f.metadata:
            value = copy.deepcopy(f.metadata["default"])
        elif dataclasses.is_dataclass(hints[f.name]):
            value = defaults(hints[f.name])
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue  # a required field has no default
        plain[f.name] = _plain(value)
    return plain


def lay_over(cls: type, base: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` laid over ``base`` (both plain) following the schema ``cls``.

    Mappings merge key by key, so ``{"model": {"encoders": {"image": {"backbone": "x"}}}}`` changes one
    option of the default image encoder. A component given by name alone (``fusion: gated``) means
    ``{name: gated}``; a component given another name than the one below it starts from that
    component's own defaults instead of merging with the other's options.
    """
    merged = copy.deepcopy(dict(base))
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in data.items():
        merged[key] = _lay_value(hints.get(key), merged.get(key), value)
    return merged


def _lay_value(hint: Any, below: Any, value: Any) -> Any:
    if registered_kind(hint):
        return _lay_component(below, value)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict and args and registered_kind(args[1]) and isinstance(value, Mapping):
        below = below if isinstance(below, Mapping) else {}
        return {**copy.deepcopy(dict(below)), **{k: _lay_component(below.get(k), v) for k, v in value.items()}}
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping) and isinstance(below, Mapping):
        return lay_over(hint, below, value)
    if isinstance(value, Mapping) and isinstance(below, Mapping):
        return deep_merge(below, value)
    return copy.deepcopy(value)


def _lay_component(below: Any, value: Any) -> Any:
    value = {"name": value} if isinstance(value, str) else value
    if (
        isinstance(value, Mapping)
        and isinstance(below, Mapping)
        and value.get("name", below.get("name")) == below.get("name")
    ):
        return deep_merge(below, value)
    return copy.deepcopy(value)


def resolve(data: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build and fully validate an :class:`ExperimentConfig` (components, cross-field rules) from plain data.

    ``data`` is laid over the defaults (see :func:`lay_over`). Nothing is read from the dataset.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(data).__name__}")
    config = build_dataclass(ExperimentConfig, lay_over(ExperimentConfig, defaults(), data or {}))
    check_rules(config)
    return config


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment: defaults, then the YAML file (if any), then dotted overrides."""
    data = load_yaml(path) if path else {}
    return resolve(apply_overrides(data, overrides or {}))


def evolve(config: ExperimentConfig, changes: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` with dotted keys changed, resolved and checked again (e.g. a unimodal variant).

    Values may be plain data or resolved parts (a :class:`Component`, a section).
    """
    return resolve(apply_overrides(to_dict(config), {key: _plain(value) for key, value in changes.items()}))


# --------------------------------------------------------------------------------------------------
# Back to plain data
# --------------------------------------------------------------------------------------------------
def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain, YAML-safe data (components as ``{name, ...options}``, tuples as lists)."""
    return _plain(config)


def _plain(value: Any) -> Any:
    if isinstance(value, Component):
        return {"name": value.name, **(_plain(value.options) if value.options is not None else {})}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML, in schema order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists stay values (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat
