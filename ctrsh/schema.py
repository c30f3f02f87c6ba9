"""Validate a YAML node tree against dataclass type hints, keeping positions.

Why not pydantic: importing it and building the models costs ~150 ms on these
machines, as much as the whole container start, and its errors carry paths,
not YAML positions. Walking the node tree ourselves gives every error its exact
`line:col`, reports all errors at once, and stays a page of code. The same
type hints also produce the JSON Schema (`json_schema`).

Supported hints: str, int, bool, float (an integer is accepted too), list[T], dict[str, T], Literal[...], T | None
and nested dataclasses. Field metadata: "doc" (text for the schema and the
README), "check" (value -> error message or None, for rules beyond the type;
or a list of (index or key, message) to point at the items at fault), "partial"
(the check also runs when some items failed: it skips them), "text" (a string
that may be written as a number: `[sleep, 300]`), "lines" (a string that may
hold newlines and tabs), "schema" (the JSON Schema of a field whose hint says less
than its check, e.g. a size written `256M` or 268435456), "json" (added to the
JSON Schema the hint gives). A dataclass with `one_of = True` (a ClassVar) needs
exactly one field set; one with a `rules` ClassVar (instance -> list of (field,
message)) is checked as a whole once its fields are valid.

A recipe is untrusted: every string is checked for characters that could hide
text (yamlload.REFUSED), a value YAML cannot construct is a problem, not an
exception, and the walk counts every node it visits, so aliases that expand
a small file into a huge tree are refused after MAX_NODES.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import yamlload
from .errors import Problem

Pos = tuple[int, int]


class _Invalid:
    """Marks a value that failed; its problem is already recorded."""


INVALID: Any = _Invalid()
INTERNAL = {"internal": True}  # field metadata: set by code, never a key in the YAML

_KIND = {str: "a string", int: "an integer", bool: "a boolean (true/false)", float: "a number"}
MAX_NODES = 10_000  # values visited, each alias use counted again: a real recipe has well under 1000
MAX_PROBLEMS = 100  # a hostile file must not print a million lines
TAG = "tag:yaml.org,2002:"


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
    visited: int = 0
    _text: bool = False  # converting a "text" field: numbers are kept as written
    _lines: bool = False  # converting a "lines" field: newlines and tabs allowed
    _merged: set[int] = field(default_factory=set)  # ids of mappings that had a merge key

    def error(self, at: Node | Pos, message: str) -> Any:
        line, col = at if isinstance(at, tuple) else pos(at)
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(self.file, line, col, message))
        elif len(self.problems) == MAX_PROBLEMS:
            last = max(self.problems, key=lambda p: (p.line, p.col))  # listed last, after the sort by position
            self.problems.append(Problem(self.file, last.line, last.col, "too many problems; the rest are not shown"))
        return INVALID

    def convert(self, node: Node, hint: Any, path: str) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            if self.visited == MAX_NODES + 1:
                self.error(node, f"more than {MAX_NODES} values (each use of an alias counts): refused")
            return INVALID
        self.positions.setdefault(path, pos(node))
        origin = typing.get_origin(hint)
        if origin in (Union, types.UnionType):
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = type(None) in typing.get_args(hint)  # `list[str] | str` does not take null
            if optional and self._scalar(node) is None and not dataclasses.is_dataclass(inner[0]):
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
        if not isinstance(node, ScalarNode):
            return INVALID
        if node.tag == f"{TAG}timestamp":
            return node.value  # a date is text: JSON has no dates, and `2024-13-45` is no date at all
        if node.tag in (f"{TAG}merge", f"{TAG}value"):
            return _Refused(node.value)
        try:
            return self.construct(node)
        except (yaml.YAMLError, ValueError, OverflowError, TypeError):
            return _Refused(node.value)

    def _plain(self, node: Node, hint: type, path: str) -> Any:
        if hint is str and isinstance(node, ScalarNode) and node.tag in (f"{TAG}int", f"{TAG}float"):
            if not self._text:  # not constructed: a 5000-digit int is no error of Python's to raise
                return self.error(
                    node,
                    f"{path}: expected a string, got a number ({node.value}); "
                    f"quote it to mean the text: '{node.value}'",
                )
            value: object = node.value  # `[sleep, 10]`: keep the text as written, not a number's repr
        else:
            value = self._scalar(node)
        if isinstance(value, _Refused):
            if value.text == "<<":
                return self.error(node, f"{path or 'recipe'}: merge keys ('<<') are not supported: write the keys out")
            return self.error(node, f"{path}: cannot read the value {value.text!r}")
        if hint is float and type(value) is int:
            value = float(value)  # `cpus: 2` is a number too
        if type(value) is not hint:
            quote = f"; quote it to mean the text: '{node.value}'" if hint is str and isinstance(value, bool) else ""
            return self.error(node, f"{path}: expected {_KIND[hint]}, got {describe(node, value)}{quote}")
        if isinstance(value, str) and "\0" in value:
            return self.error(node, f"{path}: contains a NUL byte, which no command argument can hold")
        if isinstance(value, str):
            refused = (yamlload.REFUSED_RE if self._lines else yamlload.REFUSED_IN_VALUE_RE).search(value)
            if refused and refused.group() in "\t\n":
                return self.error(
                    node,
                    f"{path}: contains a {'tab' if refused.group() == chr(9) else 'newline'}, "
                    "which only process.args may hold",
                )
            if refused:
                return self.error(
                    node,
                    f"{path}: contains the control character {yamlload.char_name(refused.group())}, "
                    "which could hide text in `plan`, the trace and `export`; remove it",
                )
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
            if isinstance(key, _Refused) and key.text == "<<":
                self.error(knode, f"{path or 'recipe'}: merge keys ('<<') are not supported: write the keys out")
                self._merged.add(id(node))  # what it would have merged is not also reported missing
                continue
            if isinstance(key, str) and (bad := yamlload.REFUSED_IN_VALUE_RE.search(key)):
                self.error(
                    knode,
                    f"{path or 'recipe'}: a key contains the control character "
                    f"{yamlload.char_name(bad.group())}; remove it",
                )
                continue
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
            meta = fields[key].metadata
            self._text, self._lines = bool(meta.get("text")), bool(meta.get("lines"))
            try:
                value = self.convert(vnode, hints[key], join(path, key))
            finally:
                self._text = self._lines = False
            check = meta.get("check")
            if check and value is not None and (meta.get("partial") or not _invalid(value)) and value is not INVALID:
                value = self._check(check(value), value, vnode, join(path, key))
            values[key] = value
        required = [f.name for f in fields.values() if _is_required(f)]
        for name in required:
            if name not in values and name not in misspelt and id(node) not in self._merged:
                self.error(node, f"missing required key {join(path, name)!r}")
        if getattr(cls, "one_of", False) and len(values) != 1 and not any(v is INVALID for v in values.values()):
            options = ", ".join(fields)
            self.error(node, f"{path}: set exactly one of: {options}")
            return INVALID
        if any(_invalid(v) for v in values.values()) or any(n not in values for n in required):
            return INVALID
        out = cls(**values)
        rules = getattr(cls, "rules", None)
        if rules:
            written = {key: vnode for key, _, vnode in pairs}
            problems = rules(out)
            for key, msg in problems:
                self.error(written.get(key, node), f"{join(path, key)}: {msg}")
            if problems:
                return INVALID
        return out

    def _check(self, result: str | list[tuple[int | str | None, str]] | None, value: Any, node: Node, path: str) -> Any:
        """Record what a field's check found: on the whole value, or on each item at fault."""
        if not result:
            return value
        if isinstance(result, str):
            return self.error(node, f"{path}: {result}")
        for item, msg in result:
            at: Node = node
            if item is None:
                where = path
            elif isinstance(item, int) and isinstance(node, SequenceNode):
                at, where = node.value[item], f"{path}[{item}]"
            else:
                where = path  # the message names the key
                if isinstance(node, MappingNode):
                    at = next((k for k, _ in node.value if isinstance(k, ScalarNode) and k.value == item), node)
            self.error(at, f"{where}: {msg}")
        return INVALID


@dataclass(frozen=True)
class _Refused:
    """A scalar YAML could not construct (or a merge key): its text, for the message."""

    text: str


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
    """The JSON Schema (draft 2020-12) for a dataclass tree, from the same hints.

    It accepts what the loader accepts: numbers where a field is "text", null
    where a value is optional, no control characters; field metadata "json"
    adds what a check enforces (patterns, lengths), a dataclass's `json_rules`
    what its `rules` do. Byte sizes (the kernel's limits) it cannot express.
    """
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in public_fields(cls).values():
        prop = dict(f.metadata["schema"]) if "schema" in f.metadata else _schema_of(hints[f.name], f.metadata)
        prop.update(f.metadata.get("json", {}))
        if doc := f.metadata.get("doc"):
            prop["description"] = doc
        props[f.name] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    required = [f.name for f in public_fields(cls).values() if _is_required(f)]
    if required:
        out["required"] = required
    if getattr(cls, "one_of", False):
        out["minProperties"] = out["maxProperties"] = 1
    elif not required:
        out["type"] = ["object", "null"]  # `busybox:` alone means "with defaults"
    out.update(getattr(cls, "json_rules", {}))
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    return out


def _schema_of(hint: Any, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) > 1:
            return {"anyOf": [_schema_of(a, meta) for a in inner]}
        out = _schema_of(inner[0], meta)
        if type(None) in typing.get_args(hint) and not dataclasses.is_dataclass(inner[0]):
            kinds = out.get("type")
            if isinstance(kinds, str):
                out["type"] = [kinds, "null"]
            elif isinstance(kinds, list):
                out["type"] = [*kinds, "null"]
            else:
                out = {"anyOf": [out, {"type": "null"}]}
        return out
    if dataclasses.is_dataclass(hint):
        return json_schema(typing.cast(type, hint))
    if origin is list:
        return {"type": "array", "items": _schema_of(typing.get_args(hint)[0], meta)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(typing.get_args(hint)[1], meta)}
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    if hint is str:
        refused = yamlload.REFUSED if meta.get("lines") else f"\\t\\n{yamlload.REFUSED}"
        text: Any = ["string", "number"] if meta.get("text") else "string"
        return {"type": text, "not": {"type": "string", "pattern": f"[{refused}]"}}
    return {"type": {int: "integer", bool: "boolean", float: "number"}[hint]}
