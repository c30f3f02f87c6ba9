"""Reading recipe text safely: a size cap, UTF-8, no control characters, and only plain YAML.

A recipe is untrusted input. Everything here runs before the YAML is composed
into nodes, so a hostile file costs at most one bounded read and one pass of
the event parser (which keeps its own stack: no recursion, whatever the depth):
- at most MAX_BYTES are read (`ctrsh plan /dev/zero` ends at once);
- bytes that are not UTF-8, and characters that could hide text from a human
  reading `plan`, the trace or `export` (terminal controls, bidi overrides),
  are refused at their position;
- tags (`!!python/object`, `!!binary`, `!!timestamp`, any `!x`) are refused:
  a recipe is plain strings, lists and mappings;
- nesting deeper than MAX_DEPTH is refused before anything recursive sees it.
Aliases are allowed but their expansion is capped while walking (schema.Checker).
"""

from __future__ import annotations

import re
import unicodedata

import yaml

from .errors import Problem, RecipeError

MAX_BYTES = 1024 * 1024  # 1 MiB: far beyond any real recipe
MAX_DEPTH = 32  # the deepest recipe key is ~4 levels down
MAX_SHOWN = 20  # problems of one kind listed before "and N more"

# Characters refused in recipe text and in any value: C0 controls (tab and
# newline aside, and CR only as part of a CRLF line end), DEL, C1 controls,
# bidi and zero-width marks, line/paragraph separators, lone surrogates.
# Each can make printed text differ from what runs (`\r` returns to the line's
# start, ESC starts a terminal sequence, U+202E reverses what follows).
OTHER_CONTROLS = r"\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff"
REFUSED = r"\x00-\x08\x0b-\x1f" + OTHER_CONTROLS  # tab and newline aside: a regex class, also for the JSON Schema
REFUSED_RE = re.compile(f"[{REFUSED}]")
REFUSED_IN_TEXT_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f" + OTHER_CONTROLS + r"]|\r(?!\n)")
REFUSED_IN_VALUE_RE = re.compile(rf"[\t\n{REFUSED}]")


def char_name(c: str) -> str:
    """`'\\r' (U+000D CARRIAGE RETURN)`: how a refused character is named in messages."""
    names = {"\0": "NUL", "\r": "CARRIAGE RETURN", "\x1b": "ESCAPE", "\n": "LINE FEED", "\x7f": "DELETE"}
    name = unicodedata.name(c, "") or names.get(c, "a control character")
    return f"{c!r} (U+{ord(c):04X} {name})"


def read(path: str, shown: str) -> str:
    """The file's text, at most MAX_BYTES of UTF-8; RecipeError otherwise (messages name it as `shown`)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # one byte more tells "too big" from "exactly the cap"
    except OSError as e:
        raise RecipeError([Problem(shown, 1, 1, f"cannot read recipe: {e.strerror}")]) from None
    if len(data) > MAX_BYTES:
        raise RecipeError([Problem(shown, 1, 1, f"the recipe is larger than {MAX_BYTES} bytes (1 MiB); not read")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        head = data[: e.start]
        line = head.count(b"\n") + 1
        col = len(head[head.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1
        byte = data[e.start]
        raise RecipeError(
            [Problem(shown, line, col, f"not UTF-8 text: byte 0x{byte:02x} cannot be decoded (a binary file?)")]
        ) from None
    return text.removeprefix("\ufeff")  # a byte order mark is harmless at the very start


def check_text(text: str, file: str) -> None:
    """Refuse characters that could hide text, wherever they are (comments included)."""
    problems = []
    found = list(REFUSED_IN_TEXT_RE.finditer(text))
    for m in found[:MAX_SHOWN]:
        line = text.count("\n", 0, m.start()) + 1
        col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        problems.append(
            Problem(file, line, col, f"control character {char_name(m.group())}: it could hide text; remove it")
        )
    if len(found) > MAX_SHOWN:
        last = problems[-1]
        problems.append(Problem(file, last.line, last.col, f"... and {len(found) - MAX_SHOWN} more such characters"))
    if problems:
        raise RecipeError(problems)


def check_events(text: str, file: str, loader: type[yaml.SafeLoader]) -> None:
    """One pass over the parser's events: refuse tags and deep nesting before composing nodes."""
    problems: list[Problem] = []
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            mark = event.start_mark
            at = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            tag = getattr(event, "tag", None)
            if tag is not None and len(problems) < MAX_SHOWN:
                shown = tag.replace("tag:yaml.org,2002:", "!!")
                problems.append(
                    Problem(file, *at, f"YAML tags are not allowed ({shown}): a recipe holds plain values only")
                )
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    problems.append(Problem(file, *at, f"nested deeper than {MAX_DEPTH} levels"))
                    break
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(x for x in (e.context, e.problem) if x)
        problems.append(Problem(file, line, col, f"YAML syntax error: {what}"))
    except yaml.YAMLError as e:  # reader errors carry no mark
        problems.append(Problem(file, 1, 1, f"YAML error: {e}"))
    if problems:
        raise RecipeError(problems)
