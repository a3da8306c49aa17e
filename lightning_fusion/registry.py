"""Name → class registries with metadata and "did you mean" errors.

Everything a user chooses by name in an experiment file (encoders, fusion strategies, dataset readers)
lives in a :class:`Registry`. The name sits next to the code through the :meth:`Registry.register`
decorator, so the list of choices never drifts from what exists::

    ENCODERS = Registry("encoder")

    @ENCODERS.register("mlp", input_kind="vector")
    class MLPEncoder(nn.Module): ...

    ENCODERS.get("mpl")  # UnknownNameError: unknown encoder 'mpl'; did you mean 'mlp'? Choices: ...
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lightning_fusion.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the closest matches of ``name`` in ``choices``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def suggest(name: str, choices: Sequence[str], what: str) -> str:
    """Build the message for an unknown ``name`` among ``choices``, with the closest matches first."""
    hint = did_you_mean(name, choices) or "."
    return f"unknown {what} {name!r}{hint} Choices: {', '.join(sorted(choices)) or '(none)'}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item: its name, the object, and free-form metadata (e.g. ``input_kind``)."""

    name: str
    obj: T
    metadata: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A mapping from snake_case names to classes (or factories), with metadata per entry."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **metadata: Any) -> Callable[[T], T]:
        """Class decorator that registers ``obj`` under ``name`` with ``metadata``."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is already registered to {self._entries[name].obj!r}")
            self._entries[name] = Entry(name, obj, dict(metadata))
            if isinstance(obj, type) and obj.__module__ != "builtins":  # a class knows the name it is chosen by
                obj.registry_name = name
            return obj

        return decorator

    def entry(self, name: str) -> Entry[T]:
        """Return the entry for ``name`` or raise :class:`UnknownNameError` with suggestions."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(suggest(name, list(self._entries), self.what)) from None

    def get(self, name: str) -> T:
        """Return the registered object for ``name``."""
        return self.entry(name).obj

    def metadata(self, name: str) -> dict[str, Any]:
        """Return the metadata registered with ``name``."""
        return dict(self.entry(name).metadata)

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the class registered under ``name``."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self, pattern: str = "*", **metadata: Any) -> list[str]:
        """Sorted names matching a glob ``pattern`` and whose metadata equals every given value."""
        return sorted(
            e.name
            for e in self._entries.values()
            if fnmatch.fnmatch(e.name, pattern) and all(e.metadata.get(k) == v for k, v in metadata.items())
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
