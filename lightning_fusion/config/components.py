"""Components: the parts of an experiment chosen by name from a registry (reader, encoders, fusion).

A config names a component as ``{name: <registry name>, <option>: <value>, ...}`` (or the name alone).
:func:`~lightning_fusion.config.building.resolve` turns that into a :class:`Component` once: the
name, an instance of the options dataclass registered with the name (defaults filled, values
checked) and, through :attr:`Component.metadata`, what the registry says about it (a fusion's
``supports_missing``, an encoder's ``input_kind``). Code that builds the parts calls
:meth:`Component.create`; nothing downstream reads names and options out of dicts again.

The registries are imported on first use only (they import torch, timm and the readers), so the
config package stays light to import.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

from lightning_fusion.errors import ConfigError, UnknownNameError
from lightning_fusion.registry import Entry, Registry, suggest

# kind → (module, registry attribute)
_REGISTRIES = {
    "reader": ("lightning_fusion.data.readers", "READERS"),
    "encoder": ("lightning_fusion.encoders", "ENCODERS"),
    "fusion": ("lightning_fusion.fusion", "FUSIONS"),
}
KINDS = tuple(_REGISTRIES)


def registry(kind: str) -> Registry:
    """The registry of a component ``kind`` (``reader``, ``encoder`` or ``fusion``), imported on first use."""
    module, attribute = _REGISTRIES[kind]
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Component:
    """One registry choice, resolved: its kind, its name and its typed options.

    ``options`` is an instance of the ``config`` dataclass registered with ``name`` (``None`` for a
    component that takes no options). Equal components have equal kind, name and options.
    """

    kind: str  # reader | encoder | fusion
    name: str
    options: Any = None

    @property
    def entry(self) -> Entry:
        """The registry entry: the class and its metadata."""
        return registry(self.kind).entry(self.name)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """What was registered with the name (e.g. ``supports_missing``, ``min_modalities``, ``input_kind``)."""
        return self.entry.metadata

    def create(self, *args: Any, **kwargs: Any) -> Any:
        """Build the registered class as ``cls(*args, options, **kwargs)`` (the registries' calling convention)."""
        return self.entry.obj(*args, self.options, **kwargs)


@dataclass(frozen=True)
class Registered:
    """Type marker of a config field holding a component: ``Annotated[Component, Registered("fusion")]``."""

    kind: str


ReaderComponent = Annotated[Component, Registered("reader")]
EncoderComponent = Annotated[Component, Registered("encoder")]
FusionComponent = Annotated[Component, Registered("fusion")]


def registered_kind(hint: Any) -> str | None:
    """The component kind of a type hint ``Annotated[Component, Registered(kind)]``, else ``None``."""
    for marker in getattr(hint, "__metadata__", ()):
        if isinstance(marker, Registered):
            return marker.kind
    return None


def component_field(kind: str, name: str, **options: Any) -> Any:
    """A dataclass field holding one component; its default is ``{name, **options}``.

    The default stays plain data in the field's metadata (``default``), which is what an experiment
    file is laid over and what ``--help`` shows; the factory resolves it when a section is built
    without the field.
    """
    spec = {"name": name, **options}
    return field(default_factory=partial(_resolved, kind, spec), metadata={"default": spec})


def component_map_field(kind: str, defaults: Mapping[str, Mapping[str, Any]]) -> Any:
    """A dataclass field holding one component per key (e.g. an encoder per modality)."""
    specs = {key: dict(spec) for key, spec in defaults.items()}
    return field(default_factory=partial(_resolved_map, kind, specs), metadata={"default": specs})


def _resolved(kind: str, spec: Mapping[str, Any]) -> Component:
    return resolve_component(kind, spec)


def _resolved_map(kind: str, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Component]:
    return {key: _resolved(kind, spec) for key, spec in specs.items()}


# --------------------------------------------------------------------------------------------------
# Typed values from plain data: dataclasses and the components inside them
# --------------------------------------------------------------------------------------------------
def build_dataclass(cls: type, data: Mapping[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types; errors name the dotted path."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{key_path}: " + suggest(str(key), list(fields), "config key"))
        kwargs[key] = _coerce(hints[key], value, key_path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, UnknownNameError) as err:  # UnknownNameError: a bad choice among names
        raise ConfigError(f"{path or 'config'}: {err}") from err


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Annotated:
        kind = registered_kind(hint)
        return resolve_component(kind, value, path) if kind else _coerce(args[0], value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {hint}")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        item = args[1] if args else Any
        return {str(k): _coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
            raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}")
        return hint(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def resolve_component(kind: str, value: Any, path: str = "") -> Component:
    """Resolve ``{name: ..., options...}`` (or a name alone) into a :class:`Component` of ``kind``.

    The options are checked against the ``config`` dataclass registered with the name and filled with
    its defaults; an unknown name or option is a :class:`ConfigError` naming ``path`` and the choices.
    """
    path = path or kind
    what = registry(kind).what
    if isinstance(value, Component):
        if value.kind != kind:
            raise ConfigError(f"{path}: expected a {what}, got the {value.kind} {value.name!r}")
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or "name" not in value:
        raise ConfigError(f"{path}: expected {{name: <{what}>, ...options}}, got {value!r}")
    name = str(value["name"])
    try:
        entry = registry(kind).entry(name)
    except UnknownNameError as err:
        raise ConfigError(f"{path}.name: {err}") from None
    options = {k: v for k, v in value.items() if k != "name"}
    config_cls = entry.metadata.get("config")
    if config_cls is None:
        if options:
            raise ConfigError(f"{path}: {what} {name!r} takes no options, got {sorted(options)}")
        return Component(kind, name)
    return Component(kind, name, build_dataclass(config_cls, options, path))
