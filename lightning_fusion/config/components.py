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

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

from lightning_fusion.registry import Entry, Registry

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

    def create(self, *args: Any) -> Any:
        """Build the registered class as ``cls(*args, options)`` (the registries' calling convention)."""
        return self.entry.obj(*args, self.options)


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
    from lightning_fusion.config.building import resolve_component  # building imports the schema, which imports this

    return resolve_component(kind, spec)


def _resolved_map(kind: str, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Component]:
    return {key: _resolved(kind, spec) for key, spec in specs.items()}
