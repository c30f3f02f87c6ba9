"""Hostile recipe input: every YAML trick is a FILE:LINE:COL problem (exit 2), never a traceback,
and the JSON Schema accepts exactly what the loader accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from ctrsh.compile import compile_plan
from ctrsh.errors import RecipeError
from ctrsh.export import export_script
from ctrsh.facts import Facts
from ctrsh.recipe import Recipe, parse, recipe_schema
from ctrsh.render import render_plan
from ctrsh.schema import public_fields

ROOT = Path(__file__).resolve().parents[2]
B = "rootfs: {busybox: {}}\nprocess: {args: [a]}\n"
R = "name: x\nrootfs: {busybox: {}}\n"  # add a process
KNOWN = ", ".join(public_fields(Recipe))  # the recipe's top-level keys, as "unknown key" lists them

CASES = [
    ("python tag", "name: !!python/object/apply:os.system [id]\n" + B,
     "r.yaml:1:7: YAML tags are not allowed (!!python/object/apply:os.system): a recipe holds plain values only"),
    ("binary tag", "name: !!binary aGVsbG8=\n" + B,
     "r.yaml:1:7: YAML tags are not allowed (!!binary): a recipe holds plain values only"),
    ("bad timestamp tag", R + "process: {args: [a, !!timestamp 2024-13-45]}\n",
     "r.yaml:3:21: YAML tags are not allowed (!!timestamp): a recipe holds plain values only"),
    ("local tag", "name: !x y\n" + B, "r.yaml:1:7: YAML tags are not allowed (!x): a recipe holds plain values only"),
    ("tag on a mapping", "name: x\nrootfs: !!map {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:2:9: YAML tags are not allowed (!!map): a recipe holds plain values only"),
    ("merge key", R + "base: &b {args: [a]}\nprocess: {<<: *b}\n",
     f"r.yaml:3:1: unknown key 'base' (known: {KNOWN})\n"
     "r.yaml:4:11: process: merge keys ('<<') are not supported: write the keys out"),
    ("escape in the text", "name: x\x1b[2J\n" + B,
     "r.yaml:1:8: control character '\\x1b' (U+001B ESCAPE): it could hide text; remove it"),
    ("carriage return in the text", "name: x\ry\n" + B,
     "r.yaml:1:8: control character '\\r' (U+000D CARRIAGE RETURN): it could hide text; remove it"),
    ("NUL in the text", "# \x00\n" + B,
     "r.yaml:1:3: control character '\\x00' (U+0000 NUL): it could hide text; remove it"),
    ("bidi override in a comment", "name: x  # \u202e\n" + B,
     "r.yaml:1:12: control character '\\u202e' (U+202E RIGHT-TO-LEFT OVERRIDE): it could hide text; remove it"),
    ("escaped controls in a value", R + 'process: {args: [a, "b\\rc", "\\e[1A"]}\n',
     "r.yaml:3:21: process.args[1]: contains the control character '\\r' (U+000D CARRIAGE RETURN), which could "
     "hide text in `plan`, the trace and `export`; remove it\n"
     "r.yaml:3:29: process.args[2]: contains the control character '\\x1b' (U+001B ESCAPE), which could "
     "hide text in `plan`, the trace and `export`; remove it"),
    ("newline outside args", R + 'process: {args: [a], env: {A: "x\\ny"}, cwd: "/\\t"}\n',
     "r.yaml:3:31: process.env.A: contains a newline, which only process.args may hold\n"
     "r.yaml:3:45: process.cwd: contains a tab, which only process.args may hold"),
    ("deep nesting", "name: x\n" + B + "z: " + "[" * 40 + "]" * 40 + "\n", "r.yaml:4:35: nested deeper than 32 levels"),
    ("namespaces: typo and duplicate at once", "name: x\nnamespaces: [mount, pdi, net, net]\n" + B,
     "r.yaml:2:21: namespaces[1]: unknown value 'pdi'; did you mean 'pid'? (one of: mount, uts, ipc, pid, net, cgroup, user)\n"
     "r.yaml:2:31: namespaces[3]: 'net' is listed twice (first as namespaces[2])"),
    ("three bad env names, each at its key", R + "process:\n  args: [a]\n  env:\n    1A: b\n    B-C: d\n    ok: e\n    e f: g\n",
     "r.yaml:6:5: process.env: '1A' is not a valid variable name (letters, digits and '_', not starting with a digit)\n"
     "r.yaml:7:5: process.env: 'B-C' is not a valid variable name (letters, digits and '_', not starting with a digit)\n"
     "r.yaml:9:5: process.env: 'e f' is not a valid variable name (letters, digits and '_', not starting with a digit)"),
    ("env value too big", R + f"process: {{args: [a], env: {{A: {'x' * 200_000}}}}}\n",
     "r.yaml:3:28: process.env: A=VALUE is 200002 bytes; the kernel takes at most 131071 per argument or "
     "variable (MAX_ARG_STRLEN)"),
    ("arg too big", R + f"process: {{args: [a, {'y' * 131_072}]}}\n",
     "r.yaml:3:21: process.args[1]: is 131072 bytes; the kernel takes at most 131071 per argument or "
     "variable (MAX_ARG_STRLEN)"),
    ("args and env too big together", R + "process: {args: [a" + (", " + "y" * 100_000) * 11 + "]}\n",
     "r.yaml:3:17: process.args: the arguments and environment take 1100013 bytes; ctrsh allows at most 1048576 "
     "(1 MiB; the kernel's execve limit is a quarter of the stack limit)"),
    ("hostname without uts", "name: x\nhostname: h\nnamespaces: [mount]\n" + B,
     "r.yaml:2:11: hostname: setting a hostname needs the 'uts' namespace (else it renames the host)"),
    ("a number where text is not a number", "name: 123\n" + B,
     "r.yaml:1:7: name: expected a string, got a number (123); quote it to mean the text: '123'"),
    ("a control character in a key", R + 'process: {args: [a], "k\\e": 1}\n',
     "r.yaml:3:22: process: a key contains the control character '\\x1b' (U+001B ESCAPE); remove it"),
    ("too many values after aliases", "x: &x a\n" + R + "process:\n  args: [a" + ", *x" * 10_001 + "]\n",
     f"r.yaml:1:1: unknown key 'x' (known: {KNOWN})\n"
     "r.yaml:1:4: more than 10000 values (each use of an alias counts): refused"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_a_located_problem(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as e:
        parse(text, "r.yaml")
    assert str(e.value) == expected
    assert e.value.exit_code == 2


def test_billion_laughs_is_refused_cheaply() -> None:
    # 10 aliases per level, 9 levels: 10**9 strings if expanded. Walked as the schema does, it is not.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    with pytest.raises(RecipeError) as e:
        parse("\n".join(lines) + "\n" + R + "process: {args: *a9, env: {A: *a9}}\n", "r.yaml")
    assert len(e.value.problems) <= 101


def test_text_that_is_fine() -> None:
    r = parse(
        'name: x\r\nrootfs: {busybox: {}}\r\nprocess:\r\n  args: [sh, -c, "echo a\\n\\techo b", 300, 1.50, 2024-13-45]\r\n'
        "  env: {PORT: 8080}\r\n",
        "r.yaml",
    )
    assert r.process.args == ["sh", "-c", "echo a\n\techo b", "300", "1.50", "2024-13-45"]
    assert r.process.env == {"PORT": "8080"}
    assert parse("\ufeff" + R + "process: {args: [a]}\n", "r.yaml").name == "x"  # a BOM


def test_no_value_can_hide_text_in_plan_or_export() -> None:
    # The recipe refuses \r and ESC; should one reach a Step anyway, it is printed escaped.
    from ctrsh.plan import Plan, Step

    sneaky = ("/bin/echo", "safe\rrm -rf / #", "\x1b[2K\x1b[1Ahidden", "\u202eexe.txt")
    plan = Plan("x", "r.yaml", (Step("process", sneaky, "why"),))
    for text in (render_plan(plan), export_script(plan)):
        assert not any(c in text for c in "\r\x1b\u202e")
        assert "/bin/echo $'safe\\x0drm -rf / #' $'\\x1b[2K\\x1b[1Ahidden' $'\\u202eexe.txt'" in text
    out = subprocess.run(["bash", "-c", "printf '%s|' " + plan.steps[0].command], capture_output=True).stdout
    assert out.decode() == "|".join(sneaky) + "|"  # and bash reads it back as the same arguments
    # A multi-line script stays readable, and still parses back to the one argument it is.
    r = parse(R + "process: {args: [/bin/sh, -c, \"echo 'a'\\necho b\"]}\n", "r.yaml")
    start = compile_plan(r, Facts()).steps[-1].command
    assert start.endswith("/bin/sh -c 'echo '\"'\"'a'\"'\"'\necho b'")


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom"])
def test_plan_of_an_endless_file_ends_at_once(path: str) -> None:
    r = subprocess.run([sys.executable, "-m", "ctrsh", "plan", path], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"{path}:1:1: the recipe is larger than 1048576 bytes (1 MiB); not read\n"


def test_binary_and_non_utf8_files(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_bytes(b"name: x\nrootfs: \xff\xfe\n")
    r = subprocess.run([sys.executable, "-m", "ctrsh", "plan", str(f)], cwd=ROOT, capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (2, f"{f}:2:9: not UTF-8 text: byte 0xff cannot be decoded (a binary file?)\n")
    f.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(128)))
    r = subprocess.run([sys.executable, "-m", "ctrsh", "plan", str(f)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"{f}:1:1: control character '\\x7f' (U+007F DELETE)")
    assert "Traceback" not in r.stderr


def test_size_cap_is_exact(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    head = R + "process: {args: [a]}\n"
    f.write_text(head + "#" * (1024 * 1024 - len(head) - 1) + "\n")
    assert f.stat().st_size == 1024 * 1024
    from ctrsh.recipe import load

    assert load(str(f)).name == "x"
    f.write_text(f.read_text() + "#")
    with pytest.raises(RecipeError, match="larger than 1048576 bytes"):
        load(str(f))


# The corpus both validators see: (recipe, valid?). Left to the loader alone, as JSON Schema cannot
# say them: the kernel's byte limits (MAX_ARG_STRLEN, the 1 MiB total), an rlimit's soft <= hard,
# a UID over 4294967294 written as text, a size's minimum (6M), and the host's facts (cgroup namespaces).
CORPUS = [
    (R + "process: {args: [a]}\n", True),
    (R + "process: {args: [sleep, 300]}\n", True),
    (R + "process: {args: [echo, 1.5, 2024-01-01, -3]}\n", True),
    (R + "process: {args: [300]}\n", True),
    (R + "process: {args: [-1]}\n", False),
    (R + "process: {args: [-x]}\n", False),
    (R + "process: {args: ['']}\n", False),
    (R + "process: {args: [a=b]}\n", False),
    (R + "process: {args: []}\n", False),
    (R + "process: {args: [a, yes]}\n", False),
    (R + "process: {args: [a, null]}\n", False),
    (R + "process: {args: [a, [b]]}\n", False),
    (R + 'process: {args: [sh, -c, "a\\nb\\tc"]}\n', True),
    (R + 'process: {args: [a, "b\\rc"]}\n', False),
    (R + 'process: {args: [a, "\\e[2J"]}\n', False),
    (R + 'process: {args: [a, "\\u202e"]}\n', False),
    (R + "process: {args: [a], env: {PORT: 8080, A: b}}\n", True),
    (R + "process: {args: [a], env: {1A: b}}\n", False),
    (R + "process: {args: [a], env: {A: true}}\n", False),
    (R + 'process: {args: [a], env: {A: "x\\ny"}}\n', False),
    (R + "process: {args: [a], cwd: /tmp}\n", True),
    (R + "process: {args: [a], cwd: tmp}\n", False),
    (R + "process: {args: [a], cwd: 5}\n", False),
    (R + "process: {args: [a], zzz: 1}\n", False),
    ("name: x\nrootfs: {busybox: }\nprocess: {args: [a]}\n", True),
    ("name: x\nrootfs: {}\nprocess: {args: [a]}\n", False),
    ("name: x\nrootfs: \nprocess: {args: [a]}\n", False),
    ("name: x\nrootfs: {busybox: {x: 1}}\nprocess: {args: [a]}\n", False),
    ("name: x\n" + B, True),
    ("name: X\n" + B, False),
    ("name: 123\n" + B, False),
    ("name: '123'\n" + B, True),
    (f"name: {'a' * 63}\n" + B, True),
    (f"name: {'a' * 64}\n" + B, False),
    ("name: a-\n" + B, False),
    ("hostname: web.example\nname: x\n" + B, True),
    ("hostname: -web\nname: x\n" + B, False),
    (f"hostname: {'a' * 63}.b\nname: x\n" + B, False),
    (f"hostname: {'a' * 64}\nname: x\n" + B, False),
    ("hostname:\nname: x\n" + B, True),
    ("hostname: h\nnamespaces: [mount, uts]\nname: x\n" + B, True),
    ("hostname: h\nnamespaces: [mount, pid]\nname: x\n" + B, False),
    ("namespaces: [mount, pid]\nname: x\n" + B, True),
    ("namespaces:\nname: x\n" + B, True),
    ("namespaces: [pid]\nname: x\n" + B, False),
    ("namespaces: [mount, pdi]\nname: x\n" + B, False),
    ("namespaces: [mount, net, net]\nname: x\n" + B, False),
    ("name: x\nrootfs: {busybox: {}}\n", False),
    ("- a\n", False),
    (B + "name: x\nsecurity: {capabilities: all}\n", True),
    (B + "name: x\nsecurity: {capabilities: foo}\n", False),
    (B + "name: x\nsecurity: {capabilities: [chown, CAP_KILL]}\n", True),
    (B + "name: x\nsecurity: {capabilities: [chwn]}\n", False),
    (B + "name: x\nsecurity: {capabilities: }\n", False),
    (B + "name: x\nsecurity: {user: '1000:1000'}\n", True),
    (B + "name: x\nsecurity: {user: 1000}\n", True),
    (B + "name: x\nsecurity: {user: bob}\n", False),
    (B + "name: x\nsecurity: {user: -1}\n", False),
    (B + "name: x\nsecurity: {rlimits: {nofile: '1024:4096'}}\n", True),
    (B + "name: x\nsecurity: {rlimits: {nofile: 1024, core: unlimited}}\n", True),
    (B + "name: x\nsecurity: {rlimits: {nofle: '1'}}\n", False),
    (B + "name: x\nsecurity: {rlimits: {nofile: lots}}\n", False),
    (B + "name: x\nsecurity: {masked_paths: [/proc/kcore, /sys/firmware]}\n", True),
    (B + "name: x\nsecurity: {masked_paths: [/etc]}\n", False),
    (B + "name: x\nsecurity: {readonly_paths: [/proc/../etc]}\n", False),
    (B + "name: x\nsecurity: {no_new_privileges: false}\n", True),
    (B + "name: x\nsecurity: {no_new_privileges: 1}\n", False),
    (B + "name: x\nsecurity:\n", True),
    (R + "process: {args: [a], terminal: true}\n", True),
    (B + "name: x\nresources: {memory: 256M, cpus: 1.5, pids: 64, cpu_weight: 100}\n", True),
    (B + "name: x\nresources: {memory: 268435456, memory_swap: -1}\n", True),
    (B + "name: x\nresources: {memory: lots}\n", False),
    (B + "name: x\nresources: {memory: }\n", True),
    (B + "name: x\nresources: {cpus: 0}\n", False),
    (B + "name: x\nresources: {cpus: '2'}\n", False),
    (B + "name: x\nresources: {pids: 0}\n", False),
    (B + "name: x\nresources: {cpu_weight: 10001}\n", False),
    (B + "name: x\nresources: {memory_swap: 1G}\n", True),
    (B + "name: x\nresources:\n", True),
    ("name: x\nrootfs: {busybox: {}}\nprocess: [a]\n", False),
]


def _as_json(text: str) -> object:
    """The recipe as a JSON Schema validator sees YAML (as editors do): dates are text, as in JSON."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass


@pytest.mark.parametrize(("text", "valid"), CORPUS)
def test_schema_and_loader_agree(text: str, valid: bool) -> None:
    validator = jsonschema.Draft202012Validator(recipe_schema())
    schema_ok = validator.is_valid(_as_json(text))
    try:
        parse(text, "r.yaml")
        loader_ok = True
    except RecipeError:
        loader_ok = False
    assert (loader_ok, schema_ok) == (valid, valid)


def test_schema_is_a_valid_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(recipe_schema())
