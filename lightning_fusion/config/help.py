"""The config part of ``--help``, generated from the schema: every key with its type, default and doc.

A field's doc is its comment in the dataclass source (on the field's line or the lines just above
it), so the schema documents itself once. :func:`config_help` lists the sections and keys without
importing the registries (it stays fast); :func:`components_help` lists the registered components
of one kind with their options (it imports that registry).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from lightning_fusion.config.building import defaults
from lightning_fusion.config.components import KINDS, registered_kind, registry
from lightning_fusion.config.schema import ExperimentConfig

WIDTH = 120  # a row longer than this puts its doc on the next lines


# --------------------------------------------------------------------------------------------------
# Field docs, types and defaults
# --------------------------------------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """Field name → its comment in the source of ``cls`` (and of the dataclasses it inherits from).

    A field's comment is the comment on its (first) line, else the comment lines just above it.
    """
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


@functools.cache
def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a frozen build): no docs
        return {}
    classdef = next(node for node in ast.parse(source).body if isinstance(node, ast.ClassDef))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    docs, previous_end = {}, classdef.lineno
    for statement in classdef.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            # the comment on the field's (first) line, else the comment lines just above it; comments
            # inside a multi-line default are about the code
            above = range(previous_end + 1, statement.lineno)
            own = comments.get(statement.lineno)
            docs[statement.target.id] = own or " ".join(comments[n] for n in above if n in comments)
        previous_end = statement.end_lineno or statement.lineno
    return docs


def type_label(hint: Any) -> str:
    """How a field's type reads in the help: ``INT``, ``FLOAT|null``, ``[STR,...]``, ``FUSION``."""
    kind = registered_kind(hint)
    if kind:
        return kind.upper()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "VALUE"
    if origin is typing.Annotated:
        return type_label(args[0])
    if origin in (typing.Union, types.UnionType):
        label = "|".join(type_label(a) for a in args if a is not type(None))
        return f"{label}|null" if type(None) in args else label
    if origin is list or (origin is tuple and args and args[-1] is Ellipsis):
        return f"[{type_label(args[0]) if args else 'VALUE'},...]"
    if origin is tuple:
        return "[" + ",".join(type_label(a) for a in args) + "]"
    if origin is dict:
        return "{KEY: " + (type_label(args[1]) if args else "VALUE") + "}"
    return getattr(hint, "__name__", str(hint)).upper()


def value_label(value: Any) -> str:
    """A default as one would write it in YAML: ``null``, ``true``, ``[a, b]``, ``{name: timm, ...}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_label(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if set(value) == {"name"}:
            return value_label(value["name"])  # a component with its default options
        return "{" + ", ".join(f"{k}: {value_label(v)}" for k, v in value.items()) + "}"
    return str(value)


# --------------------------------------------------------------------------------------------------
# The schema's keys
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Key:
    """One config key as the help shows it."""

    path: str  # dotted, e.g. data.batch_size; model.encoders.<modality> for a map of components
    type: str
    default: str
    doc: str


def schema_keys(cls: type = ExperimentConfig, prefix: str = "", plain: Mapping[str, Any] | None = None) -> Iterator:
    """``(section path, section class)`` before each section's own keys, then its :class:`Key` rows."""
    plain = defaults(cls) if plain is None else plain
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = field_docs(cls)
    sections = []
    yield prefix, cls
    for f in dataclasses.fields(cls):
        hint, path, default = hints[f.name], f"{prefix}{f.name}", plain.get(f.name, dataclasses.MISSING)
        if dataclasses.is_dataclass(hint):
            sections.append((hint, f"{path}.", default))
            continue
        doc = docs.get(f.name, "")
        kind = registered_kind(hint) or _map_kind(hint)
        if kind:
            path = _component_path(path, hint)
            doc += ("; " if doc else "") + f"options {path}.<option>: --help-components {kind}"
        if _map_kind(hint):  # one component per key: the type of one, the defaults of each
            label = ", ".join(f"{k}: {value_label(v)}" for k, v in default.items())
            yield Key(path, type_label(typing.get_args(hint)[1]), label, doc)
        else:
            label = "required" if default is dataclasses.MISSING else value_label(default)
            yield Key(path, type_label(hint), label, doc)
    for section, path, values in sections:
        yield from schema_keys(section, path, values)


def _map_kind(hint: Any) -> str | None:
    args = typing.get_args(hint)
    return registered_kind(args[1]) if typing.get_origin(hint) is dict and len(args) == 2 else None


def _component_path(path: str, hint: Any) -> str:
    """``model.encoders`` → ``model.encoders.<modality>`` for a map of components."""
    if not _map_kind(hint):
        return path
    return f"{path}.<modality>" if path.endswith("encoders") else f"{path}.<key>"


def component_paths() -> dict[str, str]:
    """Component kind → where the schema holds it (``fusion`` → ``model.fusion``)."""
    found: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{name}.")
            elif registered_kind(hint) or _map_kind(hint):
                found[registered_kind(hint) or _map_kind(hint)] = _component_path(f"{prefix}{name}", hint)

    walk(ExperimentConfig, "")
    return found


# --------------------------------------------------------------------------------------------------
# The texts
# --------------------------------------------------------------------------------------------------
def _row(flag: str, width: int, default: str, doc: str) -> str:
    line = f"  {flag.ljust(width)}  (default {default})"
    if not doc:
        return line
    if len(line) + 2 + len(doc) <= WIDTH:
        return f"{line}  {doc}"
    return f"{line}\n" + textwrap.fill(doc, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)


def config_help(
    dash: str = "--", how: str = "set them in the experiment file, or override one as --section.key VALUE"
) -> str:
    """Every config section and key: ``--data.batch_size INT  (default 32)  samples per batch``.

    ``dash`` is put before each key (``--`` where the command takes overrides, ``""`` where the keys
    are written in a file, e.g. a sweep's space).
    """
    lines = [f"config keys ({how}; values are YAML: 3, 1e-3, true, null, [a, b], {{name: x, option: y}}):"]
    section: list[Key] = []

    def close_section() -> None:
        width = max((len(f"{dash}{k.path} {k.type}") for k in section), default=0)
        lines.extend(_row(f"{dash}{k.path} {k.type}", width, k.default, k.doc) for k in section)
        section.clear()

    for row in schema_keys():
        if isinstance(row, Key):
            section.append(row)
            continue
        close_section()
        path, cls = row
        lines += ["", f"{path.rstrip('.') or 'top level'}: {_summary(cls)}"]
    close_section()
    kinds = ", ".join(f"--help-components {kind}" for kind in KINDS)
    note = f"Components are chosen by name, alone (fusion: gated) or with options ({{name: gated, d: 32}}); {kinds}"
    note += " list them."
    return "\n".join([*lines, "", textwrap.fill(note, WIDTH)])


def _summary(obj: Any) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())


def components_help(kind: str, dash: str = "--") -> str:
    """Every registered component of ``kind`` with its registry metadata and its options."""
    chosen = registry(kind)
    path = component_paths()[kind]
    lines = [f"{path}: one {chosen.what} by name, {dash}{path} NAME; its options as {dash}{path}.<option> VALUE"]
    for name in chosen.names():
        entry = chosen.entry(name)
        about = ", ".join(f"{k} {value_label(v)}" for k, v in entry.metadata.items() if k != "config")
        summary = _summary(entry.obj)
        lines += ["", f"{name}" + (f"  ({about})" if about else "") + (f": {summary}" if summary else "")]
        options = entry.metadata.get("config")
        if options is None:
            lines.append("  (no options)")
            continue
        rows = [r for r in schema_keys(options, f"{path}.") if isinstance(r, Key)]
        width = max((len(f"{dash}{r.path} {r.type}") for r in rows), default=0)
        lines += [_row(f"{dash}{r.path} {r.type}", width, r.default, r.doc) for r in rows]
    return "\n".join(lines)
