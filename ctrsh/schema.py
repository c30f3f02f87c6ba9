"""Validate a YAML node tree against dataclass type hints, keeping positions.

Why not pydantic: importing it and building the models costs ~150 ms on these
machines, as much as the whole container start, and its errors carry paths,
not YAML positions. Walking the node tree ourselves gives every error its exact
`line:col`, reports all errors at once, and stays a page of code. The same
type hints also produce the JSON Schema (`json_schema`).

Supported hints: str, int, bool, list[T], dict[str, T], Literal[...], T | None
and nested dataclasses. Field metadata: "doc" (text for the schema and the
README), "check" (value -> error message or None, for rules beyond the type).
A dataclass with `one_of = True` (a ClassVar) needs exactly one field set.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import Problem

Pos = tuple[int, int]


class _Invalid:
    """Marks a value that failed; its problem is already recorded."""


INVALID: Any = _Invalid()
INTERNAL = {"internal": True}  # field metadata: set by code, never a key in the YAML

_KIND = {str: "a string", int: "an integer", bool: "a boolean (true/false)"}


def pos(node: Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def describe(node: Node, value: object) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({node.value})"
    if isinstance(value, (int, float)):
        return f"a number ({node.value})"
    return f"a string ({node.value!r})" if len(node.value) < 40 else "a string"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class Checker:
    """Converts nodes to typed values, recording problems and value positions."""

    file: str
    construct: Callable[[ScalarNode], object]
    problems: list[Problem] = field(default_factory=list)
    positions: dict[str, Pos] = field(default_factory=dict)

    def error(self, at: Node | Pos, message: str) -> Any:
        line, col = at if isinstance(at, tuple) else pos(at)
        self.problems.append(Problem(self.file, line, col, message))
        return INVALID

    def convert(self, node: Node, hint: Any, path: str) -> Any:
        self.positions.setdefault(path, pos(node))
        origin = typing.get_origin(hint)
        if origin in (Union, types.UnionType):
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            if self._scalar(node) is None and not dataclasses.is_dataclass(inner[0]):
                return None
            if len(inner) > 1:  # `list[str] | str`: the YAML node's kind picks the alternative
                lists = [a for a in inner if typing.get_origin(a) is list]
                others = [a for a in inner if typing.get_origin(a) is not list]
                pick = lists[0] if isinstance(node, SequenceNode) and lists else others[0]
                return self.convert(node, pick, path)
            return self.convert(node, inner[0], path)
        if dataclasses.is_dataclass(hint):
            return self._dataclass(node, typing.cast(type, hint), path)
        if origin is list:
            return self._list(node, typing.get_args(hint)[0], path)
        if origin is dict:
            return self._dict(node, typing.get_args(hint)[1], path)
        if origin is Literal:
            return self._literal(node, typing.get_args(hint), path)
        return self._plain(node, hint, path)

    def _scalar(self, node: Node) -> object:
        return self.construct(node) if isinstance(node, ScalarNode) else INVALID

    def _plain(self, node: Node, hint: type, path: str) -> Any:
        value = self._scalar(node)
        if hint is str and isinstance(node, ScalarNode) and not isinstance(value, (bool, type(None), str)):
            value = node.value  # `[sleep, 10]`, a date: keep the text as written, not a number's repr
        if type(value) is not hint:
            quote = f"; quote it to mean the text: '{node.value}'" if hint is str and isinstance(value, bool) else ""
            return self.error(node, f"{path}: expected {_KIND[hint]}, got {describe(node, value)}{quote}")
        if isinstance(value, str) and "\0" in value:
            return self.error(node, f"{path}: contains a NUL byte, which no command argument can hold")
        return value

    def _literal(self, node: Node, choices: tuple[str, ...], path: str) -> Any:
        value = self._scalar(node)
        if value in choices:
            return value
        hint = difflib.get_close_matches(str(value), choices, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        shown = repr(node.value) if isinstance(node, ScalarNode) else describe(node, value)
        return self.error(node, f"{path}: unknown value {shown}{extra} (one of: {', '.join(choices)})")

    def _list(self, node: Node, item: Any, path: str) -> Any:
        if not isinstance(node, SequenceNode):
            return self.error(node, f"{path}: expected a list, got {describe(node, self._scalar(node))}")
        return [self.convert(child, item, f"{path}[{i}]") for i, child in enumerate(node.value)]

    def _pairs(self, node: Node, path: str) -> list[tuple[str, Node, Node]] | None:
        """The mapping's (key, key node, value node) triples; duplicates reported."""
        if not isinstance(node, MappingNode):
            self.error(node, f"{path or 'recipe'}: expected a mapping, got {describe(node, self._scalar(node))}")
            return None
        seen: dict[str, Node] = {}
        pairs = []
        for knode, vnode in node.value:
            key = self._scalar(knode)
            if not isinstance(key, str):
                self.error(knode, f"{path or 'recipe'}: keys must be strings, got {describe(knode, key)}")
                continue
            if key in seen:
                first = pos(seen[key])[0]
                self.error(knode, f"duplicate key {join(path, key)!r} (first set on line {first})")
                continue
            seen[key] = knode
            pairs.append((key, knode, vnode))
        return pairs

    def _dict(self, node: Node, item: Any, path: str) -> Any:
        pairs = self._pairs(node, path)
        if pairs is None:
            return INVALID
        return {key: self.convert(vnode, item, join(path, key)) for key, _, vnode in pairs}

    def _dataclass(self, node: Node, cls: type, path: str) -> Any:
        if isinstance(node, ScalarNode) and self._scalar(node) is None:
            pairs: list[tuple[str, Node, Node]] | None = []  # `busybox:` alone means "with defaults"
        else:
            pairs = self._pairs(node, path)
        if pairs is None:
            return INVALID
        fields = public_fields(cls)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        misspelt: set[str] = set()  # fields a typo probably meant: not also reported as missing
        for key, knode, vnode in pairs:
            if key not in fields:
                hint = difflib.get_close_matches(key, list(fields), n=1)
                misspelt.update(hint)
                where = f" in {path}" if path else ""
                extra = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(fields)})"
                self.error(knode, f"unknown key {key!r}{where}{extra}")
                continue
            value = self.convert(vnode, hints[key], join(path, key))
            check = fields[key].metadata.get("check")
            if check and value is not None and not _invalid(value) and (msg := check(value)):
                self.error(vnode, f"{join(path, key)}: {msg}")
                value = INVALID
            values[key] = value
        required = [f.name for f in fields.values() if _is_required(f)]
        for name in required:
            if name not in values and name not in misspelt:
                self.error(node, f"missing required key {join(path, name)!r}")
        if getattr(cls, "one_of", False) and len(values) != 1 and not any(v is INVALID for v in values.values()):
            options = ", ".join(fields)
            self.error(node, f"{path}: set exactly one of: {options}")
            return INVALID
        if any(v is INVALID for v in values.values()) or any(n not in values for n in required):
            return INVALID
        return cls(**values)


def _invalid(value: object) -> bool:
    """The value, or an item of it, failed: rules beyond the type cannot be checked on it."""
    if isinstance(value, list):
        return any(v is INVALID for v in value)
    if isinstance(value, dict):
        return any(v is INVALID for v in value.values())
    return value is INVALID


def public_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) for a dataclass tree, from the same hints."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in public_fields(cls).values():
        prop = _schema_of(hints[f.name])
        if doc := f.metadata.get("doc"):
            prop["description"] = doc
        props[f.name] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    required = [f.name for f in public_fields(cls).values() if _is_required(f)]
    if required:
        out["required"] = required
    if getattr(cls, "one_of", False):
        out["minProperties"] = out["maxProperties"] = 1
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    return out


def _schema_of(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) > 1:
            return {"anyOf": [_schema_of(a) for a in inner]}
        return _schema_of(inner[0])
    if dataclasses.is_dataclass(hint):
        return json_schema(typing.cast(type, hint))
    if origin is list:
        return {"type": "array", "items": _schema_of(typing.get_args(hint)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(typing.get_args(hint)[1])}
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    return {"type": {str: "string", int: "integer", bool: "boolean"}[hint]}
