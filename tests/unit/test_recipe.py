"""Recipe loading: every kind of error gives FILE:LINE:COL and an exact message."""

from __future__ import annotations

import json

import pytest

from ctrsh.errors import RecipeError
from ctrsh.recipe import Busybox, load, parse, recipe_schema

OK = "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n"

CASES = [
    ("yaml syntax", "name: x\nrootfs: [a\n",
     "r.yaml:3:1: YAML syntax error: while parsing a flow sequence did not find expected ',' or ']'"),
    ("tab indentation", "name: x\n\trootfs: 1\n",
     "r.yaml:2:1: YAML syntax error: while scanning a plain scalar found a tab character that violates indentation"),
    ("unknown key", "name: x\nrootfs: {busybox: {}}\nhostnme: a\nprocess: {args: [a]}\n",
     "r.yaml:3:1: unknown key 'hostnme'; did you mean 'hostname'?"),
    ("unknown nested key, not also 'missing'", "name: x\nrootfs: {busybox: {}}\nprocess:\n  arg: [a]\n",
     "r.yaml:4:3: unknown key 'arg' in process; did you mean 'args'?"),
    ("unknown key, no near match", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a], zzz: 1}\n",
     "r.yaml:3:22: unknown key 'zzz' in process (known: args, env, cwd, terminal, init)"),
    ("wrong type", "name: x\nrootfs: {busybox: {}}\nprocess:\n  args: /bin/sh\n",
     "r.yaml:4:9: process.args: expected a list, got a string ('/bin/sh')"),
    ("boolean for a string", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a, yes]}\n",
     "r.yaml:3:21: process.args[1]: expected a string, got a boolean (yes); quote it to mean the text: 'yes'"),
    ("duplicate key", "name: x\nname: y\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:2:1: duplicate key 'name' (first set on line 1)"),
    ("missing key", "name: x\nrootfs: {busybox: {}}\n", "r.yaml:1:1: missing required key 'process'"),
    ("name with a space", "name: my app\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:1:7: name: 'my app' is not a valid container name: use 1-63 lowercase letters, digits and '-', "
     "starting and ending with a letter or digit (it names files, a network namespace and the hostname)"),
    ("name with a slash", "name: ../etc\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:1:7: name: '../etc' is not a valid container name: use 1-63 lowercase letters, digits and '-', "
     "starting and ending with a letter or digit (it names files, a network namespace and the hostname)"),
    ("reserved name", "name: network\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:1:7: name: 'network' is reserved: ctrsh keeps the network registry (address leases, shared pieces) "
     "under that name in its state dir"),
    ("bad hostname", "name: x\nhostname: -bad_host\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:2:11: hostname: '-bad_host' is not a valid hostname: use at most 64 characters of letters, "
     "digits, '-' and '.', in dot-separated labels of at most 63 that start and end with a letter or digit"),
    ("hostname too long", f"name: x\nhostname: {'a' * 65}\nrootfs: {{busybox: {{}}}}\nprocess: {{args: [a]}}\n",
     f"r.yaml:2:11: hostname: '{'a' * 65}' is not a valid hostname: use at most 64 characters of letters, "
     "digits, '-' and '.', in dot-separated labels of at most 63 that start and end with a letter or digit"),
    ("unknown namespace", "name: x\nnamespaces: [mount, pdi]\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:2:21: namespaces[1]: unknown value 'pdi'; did you mean 'pid'? (one of: mount, uts, ipc, pid, net, cgroup, user)"),
    ("namespaces without mount", "name: x\nnamespaces: [pid]\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:2:13: namespaces: 'mount' is required: without its own mount namespace, "
     "pivot_root would change the host's root"),
    ("namespace twice", "name: x\nnamespaces: [mount, pid, pid]\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n",
     "r.yaml:2:26: namespaces[2]: 'pid' is listed twice (first as namespaces[1])"),
    ("no rootfs source", "name: x\nrootfs: {}\nprocess: {args: [a]}\n", "r.yaml:2:9: rootfs: set exactly one of: busybox, debootstrap, tarball, directory"),
    ("empty file", "", "r.yaml:1:1: the recipe is empty; it needs at least name, rootfs and process"),
    ("not a mapping", "- a\n", "r.yaml:1:1: recipe: expected a mapping, got a list"),
    ("bad env name", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a], env: {1A: b}}\n",
     "r.yaml:3:28: process.env: '1A' is not a valid variable name (letters, digits and '_', not starting with a digit)"),
    ("relative cwd", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a], cwd: tmp}\n",
     "r.yaml:3:27: process.cwd: 'tmp' must be an absolute path inside the container"),
    ("empty args", "name: x\nrootfs: {busybox: {}}\nprocess: {args: []}\n",
     "r.yaml:3:17: process.args: needs at least the program to run, e.g. [/bin/sh]"),
    ("hostname label of 64", f"name: x\nhostname: {'a' * 64}\nrootfs: {{busybox: {{}}}}\nprocess: {{args: [a]}}\n",
     f"r.yaml:2:11: hostname: '{'a' * 64}' is not a valid hostname: use at most 64 characters of letters, "
     "digits, '-' and '.', in dot-separated labels of at most 63 that start and end with a letter or digit"),
    ("program like an option", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [-x]}\n",
     "r.yaml:3:18: process.args[0]: the program (first item) '-x' cannot start with '-' or contain '='"),
    ("program like a variable", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [/opt/a=b/run]}\n",
     "r.yaml:3:18: process.args[0]: the program (first item) '/opt/a=b/run' cannot start with '-' or contain '='"),
    ("a bad item and a rule", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [[a]]}\n",
     "r.yaml:3:18: process.args[0]: expected a string, got a list"),
    ("NUL byte", 'name: x\nrootfs: {busybox: {}}\nprocess: {args: ["a\\0b"]}\n',
     "r.yaml:3:18: process.args[0]: contains a NUL byte, which no command argument can hold"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_message_and_position(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as e:
        parse(text, "r.yaml")
    assert str(e.value) == expected
    assert e.value.exit_code == 2


def test_all_errors_reported_in_file_order() -> None:
    text = "name: A\nrootfs: {busybox: {}}\nprocess: {args: [a], cwd: rel}\nextra: 1\n"
    with pytest.raises(RecipeError) as e:
        parse(text, "r.yaml")
    assert [(p.line, p.col) for p in e.value.problems] == [(1, 7), (3, 27), (4, 1)]


def test_valid_recipe_and_defaults() -> None:
    r = parse("name: web-1\nrootfs:\n  busybox:\nprocess: {args: [sleep, 10]}\n", "r.yaml")
    assert r.name == "web-1"
    assert r.rootfs.busybox == Busybox()  # `busybox:` with no value means "with defaults"
    assert r.process.args == ["sleep", "10"]  # numbers keep their written text
    dated = parse("name: x\nrootfs: {busybox: {}}\nprocess: {args: [echo, 2024-01-01, 1.50]}\n", "r.yaml")
    assert dated.process.args == ["echo", "2024-01-01", "1.50"]
    assert (r.process.env, r.process.cwd, r.hostname, r.namespaces) == ({}, "/", None, None)
    assert r.problem("process.args", "m").line == 4


def test_unreadable_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError) as e:
        load(str(tmp_path / "nope.yaml"))
    assert str(e.value) == f"{tmp_path}/nope.yaml:1:1: cannot read recipe: No such file or directory"


def test_ok_baseline_parses() -> None:
    assert parse(OK, "r.yaml").name == "x"


def test_json_schema_matches_the_loader() -> None:
    s = recipe_schema()
    json.dumps(s)
    assert s["required"] == ["name", "rootfs", "process"]
    assert s["additionalProperties"] is False
    assert set(s["properties"]) == {
        "name",
        "rootfs",
        "process",
        "hostname",
        "namespaces",
        "security",
        "resources",
        "readonly",
        "mounts",
        "dns",
        "network",
        "uid_map",
        "gid_map",
    }
    assert s["properties"]["namespaces"]["items"]["enum"] == ["mount", "uts", "ipc", "pid", "net", "cgroup", "user"]
    assert s["properties"]["rootfs"]["maxProperties"] == 1


U = "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a]}\nnamespaces: [mount, user, pid]\n"
IDMAP_CASES = [
    ("not three numbers", U + "uid_map: ['0 100000']\n",
     "r.yaml:5:11: uid_map[0]: '0 100000' is not 'INSIDE OUTSIDE COUNT' (three numbers, e.g. '0 100000 65536')"),
    ("host root", U + "uid_map: ['0 0 1']\n",
     "r.yaml:5:11: uid_map[0]: '0 0 1' maps onto host id 0 (root): root inside would be root on the host"),
    ("inside overlap", U + "gid_map: ['0 100000 10', '5 200000 10']\n",
     "r.yaml:5:26: gid_map[1]: '5 200000 10': its ids inside overlap those of [0] ('0 100000 10')"),
    ("host overlap", U + "uid_map: ['0 100000 10', '10 100005 10']\n",
     "r.yaml:5:26: uid_map[1]: '10 100005 10': its host ids overlap those of [0] ('0 100000 10')"),
    ("overflow", U + "uid_map: ['0 4294967000 1000']\n",
     "r.yaml:5:11: uid_map[0]: '0 4294967000 1000': the range overflows: ids end below 4294967295 "
     "(4294967295 is not an id)"),
    ("zero count", U + "uid_map: ['0 100000 0']\n", "r.yaml:5:11: uid_map[0]: '0 100000 0': the count must be at least 1"),
    ("root not mapped", U + "uid_map: ['1 100000 10']\n",
     "r.yaml:5:10: uid_map: must map id 0 inside: the container starts as root of its user namespace"),
    ("empty", U + "uid_map: []\n",
     "r.yaml:5:10: uid_map: needs at least one line 'INSIDE OUTSIDE COUNT', e.g. '0 100000 65536'"),
    ("too many lines", U + "uid_map: [" + ", ".join(f"'{i} {100000 + i} 1'" for i in range(341)) + "]\n",
     "r.yaml:5:10: uid_map: has 341 lines; the kernel takes at most 340\n"
     "r.yaml:5:10: uid_map: is more than 4095 bytes; the kernel reads a map in one write of under a page"),
    ("user without pid", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a]}\nnamespaces: [user, mount]\n",
     "r.yaml:4:13: namespaces: 'user' needs 'pid': PID 1 mounts /proc, which root of a user namespace may do "
     "only for a PID namespace that namespace owns"),
    ("without user", "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a]}\nuid_map: ['0 100000 65536']\n",
     "r.yaml:4:10: uid_map: uid_map needs 'user' in namespaces (without a user namespace ids are the host's)"),
    ("user not mapped", U + "uid_map: ['0 100000 1000']\nsecurity: {user: '1000:0'}\n",
     "r.yaml:6:11: security: security.user: uid 1000 is not in uid_map, so it has no host id: the switch to "
     "it would fail"),
]  # fmt: skip


@pytest.mark.parametrize("text,expected", [c[1:] for c in IDMAP_CASES], ids=[c[0] for c in IDMAP_CASES])
def test_idmap_errors(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as e:
        parse(text, "r.yaml")
    assert str(e.value) == expected


def test_idmap_defaults_and_all_problems_at_once() -> None:
    r = parse(U, "r.yaml")
    assert r.idmaps() == (("0 100000 65536",), ("0 100000 65536",))
    r = parse(U + "uid_map: ['0  100000   1000', '1000 300000 1']\n", "r.yaml")
    assert r.idmaps()[0] == ("0 100000 1000", "1000 300000 1")
    with pytest.raises(RecipeError) as e:
        parse(U + "uid_map: ['0 0 1']\ngid_map: ['x']\n", "r.yaml")
    assert len(str(e.value).splitlines()) == 2
