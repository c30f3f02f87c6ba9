"""The cgroups phase: limits as files on v1 and v2 (goldens), the join prefix, the kill undo, errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ctrsh.compile import compile_plan
from ctrsh.errors import RecipeError
from ctrsh.export import export_script
from ctrsh.facts import CgroupFacts, Facts, detect_cgroups
from ctrsh.phases import cgroups
from ctrsh.plan import Plan
from ctrsh.recipe import load, parse
from ctrsh.render import render_plan

from .test_plan import GOLDEN, golden

V1 = Facts()  # these machines: cgroup v1, a hierarchy per controller
V2 = Facts(
    cgroups=CgroupFacts(version=2, mounts=tuple((k, "/sys/fs/cgroup") for k in ("cpu", "memory", "pids"))),
    device_cgroup=False,
)
BASE = "name: box\nrootfs: {busybox: {}}\nprocess: {args: [/bin/true]}\n"


def plan_of(text: str, facts: Facts = V1) -> Plan:
    return compile_plan(parse(text, "r.yaml"), facts)


def writes(plan: Plan) -> dict[str, str]:
    """cgroup file -> value, for every `ctrsh-write` step."""
    return {s.argv[5]: s.argv[4] for s in plan.steps if s.argv[3:4] == ("ctrsh-write",)}


@pytest.mark.parametrize(("version", "facts"), [("v1", V1), ("v2", V2)])
def test_limits_golden(version: str, facts: Facts) -> None:
    plan = compile_plan(load("recipes/limits.yaml"), facts)
    golden(GOLDEN / f"limits.{version}.plan", render_plan(plan))
    golden(GOLDEN / f"limits.{version}.sh", export_script(plan))


def test_v1_files() -> None:
    res = "resources: {cpus: 1.5, cpu_weight: 100, memory: 256M, memory_swap: 1G, pids: 64}\n"
    w = writes(plan_of(BASE + res))
    assert w == {
        "/sys/fs/cgroup/cpu/ctrsh/box/cpu.cfs_period_us": "100000",
        "/sys/fs/cgroup/cpu/ctrsh/box/cpu.cfs_quota_us": "150000",
        "/sys/fs/cgroup/cpu/ctrsh/box/cpu.shares": "2597",  # runc: 2 + (100 - 1) * 262142 // 9999
        "/sys/fs/cgroup/memory/ctrsh/box/memory.limit_in_bytes": "268435456",
        "/sys/fs/cgroup/memory/ctrsh/box/memory.memsw.limit_in_bytes": "1073741824",
        "/sys/fs/cgroup/pids/ctrsh/box/pids.max": "64",
        "/sys/fs/cgroup/devices/ctrsh/box/devices.deny": "a",
    }


def test_v2_files() -> None:
    res = "resources: {cpus: 0.5, cpu_weight: 100, memory: 256M, memory_swap: 1G, pids: 64}\n"
    w = writes(plan_of(BASE + res, V2))
    assert w == {
        "/sys/fs/cgroup/cgroup.subtree_control": "+cpu +memory +pids",
        "/sys/fs/cgroup/ctrsh/cgroup.subtree_control": "+cpu +memory +pids",
        "/sys/fs/cgroup/ctrsh/box/cpu.max": "50000 100000",
        "/sys/fs/cgroup/ctrsh/box/cpu.weight": "100",
        "/sys/fs/cgroup/ctrsh/box/memory.max": "268435456",
        "/sys/fs/cgroup/ctrsh/box/memory.swap.max": "805306368",  # memory_swap is memory plus swap
        "/sys/fs/cgroup/ctrsh/box/pids.max": "64",
    }


def test_swap_defaults_as_docker() -> None:
    assert writes(plan_of(BASE + "resources: {memory: 32M}\n"))[
        "/sys/fs/cgroup/memory/ctrsh/box/memory.memsw.limit_in_bytes"
    ] == str(64 * 2**20)
    assert writes(plan_of(BASE + "resources: {memory: 32M}\n", V2))["/sys/fs/cgroup/ctrsh/box/memory.swap.max"] == str(
        32 * 2**20
    )
    assert (
        writes(plan_of(BASE + "resources: {memory: 32M, memory_swap: -1}\n", V2))[
            "/sys/fs/cgroup/ctrsh/box/memory.swap.max"
        ]
        == "max"
    )
    no_swap = Facts(cgroups=CgroupFacts(swap=False))
    assert not any("memsw" in f for f in writes(plan_of(BASE + "resources: {memory: 32M}\n", no_swap)))


def test_order_limits_before_the_start() -> None:
    """The cgroup exists and is limited before PID 1 is started in it; swap after memory (v1 requires it)."""
    plan = plan_of(BASE + "resources: {memory: 32M, pids: 8}\n")
    commands = [s.command for s in plan.steps]
    mkdir = commands.index("mkdir " + " ".join(cgroups.cgroup_dirs(V1, "box")))
    limit = next(i for i, c in enumerate(commands) if "memory.limit_in_bytes" in c)
    memsw = next(i for i, c in enumerate(commands) if "memsw" in c)
    assert mkdir < limit < memsw < len(commands) - 1
    assert plan.steps[-1].foreground


def test_every_container_gets_a_cgroup_and_teardown_kills_it_first() -> None:
    for facts in (V1, V2):
        plan = plan_of(BASE, facts)
        assert not any(s.argv[3:4] == ("ctrsh-write",) and "pids.max" in s.argv[5] for s in plan.steps)
        kill = cgroups.kill_undo(facts, "box")
        assert [s.undo for s in plan.steps if s.undo].count(kill) == 1
        teardown = [s.undo for s in reversed(plan.steps) if s.undo and not s.keep]
        assert teardown[0] == kill  # before anything else is undone, nothing of the container runs
        assert render_plan(plan).split("== teardown")[1].count("ctrsh-kill") == 1


def test_join_prefix_runs_before_every_namespace() -> None:
    for facts in (V1, V2):
        argv = plan_of(BASE, facts).steps[-1].argv
        files = [f"{d}/cgroup.procs" for d in cgroups.cgroup_dirs(facts, "box")]
        assert argv[: 4 + len(files) + 1] == ("sh", "-c", cgroups.JOIN, "ctrsh-join", *files, "--")
        rest = argv[4 + len(files) + 1 :]
        assert rest[0] == "nsenter" and rest.index("unshare") < rest.index("--cgroup")
    assert len(files) == 1  # v2: one cgroup


def test_join_script_for_real(tmp_path: Path) -> None:
    """The prefix writes its own pid into each file, then execs the rest as that same process."""
    files = [tmp_path / "a", tmp_path / "b"]
    script = cgroups.JOIN
    out = subprocess.run(["sh", "-c", script, "x", *map(str, files), "--", "sh", "-c", "echo $$"], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert [f.read_text() for f in files] == [out.stdout.decode()] * 2
    bad = subprocess.run(["sh", "-c", script, "x", str(tmp_path / "no/such"), "--", "true"], capture_output=True)
    assert bad.returncode == 125  # a join that fails stops the start


def test_kill_undo_of_what_never_happened_succeeds(tmp_path: Path) -> None:
    for facts in (V1, V2, Facts(state_dir=str(tmp_path))):
        argv = list(cgroups.kill_undo(facts, "never-made"))
        assert subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    rmdir = ["sh", "-c", cgroups.RMDIR_UNUSED, "x", str(tmp_path / "gone"), str(tmp_path)]
    (tmp_path / "child").mkdir()
    assert subprocess.run(rmdir, timeout=10).returncode == 0
    assert tmp_path.is_dir()  # it has a child: still in use, kept


def test_parent_is_tied_to_the_state_dir() -> None:
    assert cgroups.parent_name(Facts()) == "ctrsh"
    a, b = (cgroups.parent_name(Facts(state_dir=d)) for d in ("/tmp/a", "/tmp/b"))
    assert a != b and a.startswith("ctrsh-") and len(a) == len("ctrsh-") + 8
    assert cgroups.cgroup_dirs(Facts(state_dir="/tmp/a"), "box")[0] == f"/sys/fs/cgroup/cpu/{a}/box"


def test_device_cgroup_only_on_v1() -> None:
    assert cgroups.devices_enforced(V1) and not cgroups.devices_enforced(V2)
    v1 = writes(plan_of(BASE))
    assert v1["/sys/fs/cgroup/devices/ctrsh/box/devices.deny"] == "a"
    (allow,) = [s.argv for s in plan_of(BASE).steps if s.argv[3:4] == ("ctrsh-allow",)]
    assert allow[4].endswith("devices.allow")
    allowed = list(allow[5:])  # one step, one write per rule
    assert allowed == ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                       "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"]  # fmt: skip
    assert not any("devices.allow" in s.command or "devices.deny" in s.command for s in plan_of(BASE, V2).steps)
    no_devices = Facts(cgroups=CgroupFacts(mounts=(("pids", "/sys/fs/cgroup/pids"),)), device_cgroup=False)
    assert not cgroups.devices_enforced(no_devices)
    with pytest.raises(ValueError):  # facts that would keep CAP_MKNOD with no allowlist written
        plan_of(BASE, Facts(cgroups=CgroupFacts(mounts=(("pids", "/sys/fs/cgroup/pids"),))))


def test_v1_shares_as_runc() -> None:
    assert [cgroups.v1_shares(w) for w in (1, 100, 10000)] == [2, 2597, 262144]


def test_no_recipe_value_in_script_text() -> None:
    plan = plan_of(BASE.replace("name: box", "name: a-b") + "resources: {memory: 1.5G}\n")
    for step in plan.steps:
        if step.argv[:2] == ("sh", "-c") and step.phase == "cgroups":
            assert step.argv[2] in (cgroups.WRITE, cgroups.ALLOW_EACH, cgroups.KILL, cgroups.RMDIR_UNUSED)


RES = "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a]}\nresources:\n"
ERRORS = [
    ("unknown key", "  cpu: 1\n", "r.yaml:5:3: unknown key 'cpu' in resources; did you mean 'cpus'?"),
    ("cpus as text", "  cpus: one\n", "r.yaml:5:9: resources.cpus: expected a number, got a string ('one')"),
    ("cpus too small", "  cpus: 0.001\n", "r.yaml:5:9: resources.cpus: 0.001 is out of range: from 0.01 to 1024 CPUs"),
    ("cpus nan", "  cpus: .nan\n", "r.yaml:5:9: resources.cpus: nan is out of range: from 0.01 to 1024 CPUs"),
    ("cpus boolean", "  cpus: true\n", "r.yaml:5:9: resources.cpus: expected a number, got a boolean (true)"),
    ("weight", "  cpu_weight: 0\n",
     "r.yaml:5:15: resources.cpu_weight: 0 is out of range: a weight is from 1 to 10000 (default 100)"),
    ("weight float", "  cpu_weight: 1.5\n", "r.yaml:5:15: resources.cpu_weight: expected an integer, got a number (1.5)"),
    ("memory unit", "  memory: 256X\n",
     "r.yaml:5:11: resources.memory: '256X' is not a size: write bytes or a number with a unit k, M, G, T "
     "(powers of 1024), e.g. 256M"),
    ("memory tiny", "  memory: 1M\n", "r.yaml:5:11: resources.memory: '1M' is below the minimum of 6M"),
    ("memory huge", "  memory: 9E\n",
     "r.yaml:5:11: resources.memory: '9E' is more than the kernel's limit of 9223372036854775807 bytes"),
    ("pids", "  pids: 0\n", "r.yaml:5:9: resources.pids: 0 is out of range: from 1 to 4194304 (the kernel's limit)"),
    ("pids text", "  pids: lots\n", "r.yaml:5:9: resources.pids: expected an integer, got a string ('lots')"),
    ("not a mapping", "  - 1\n", "r.yaml:5:3: resources: expected a mapping, got a list"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_resource_errors(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as e:
        parse(RES + text, "r.yaml")
    assert str(e.value) == expected


def test_all_resource_errors_at_once() -> None:
    with pytest.raises(RecipeError) as e:
        parse(RES + "  cpus: 0\n  memory: x\n  pids: -1\n", "r.yaml")
    assert [(p.line, p.col) for p in e.value.problems] == [(5, 9), (6, 11), (7, 9)]


def test_sizes_and_numbers_accepted() -> None:
    r = parse(RES + "  cpus: 2\n  memory: 268435456\n  memory_swap: 1GiB\n  pids: 64\n", "r.yaml").resources
    assert r is not None and (r.cpus, r.memory, r.memory_swap, r.pids) == (2.0, "268435456", "1GiB", 64)


@pytest.mark.parametrize(
    ("text", "facts", "expected"),
    [
        ("  memory_swap: 1G\n", V1, "r.yaml:5:16: memory_swap needs memory set too"),
        ("  memory: 1G\n  memory_swap: 512M\n", V1,
         "r.yaml:6:16: memory_swap is memory plus swap: it must be at least memory, or -1"),
        ("  memory: 1G\n  memory_swap: 2G\n", Facts(cgroups=CgroupFacts(swap=False)),
         "r.yaml:6:16: this host does not account swap (boot with swapaccount=1)"),
        ("  pids: 5\n", Facts(cgroups=CgroupFacts(mounts=(("memory", "/sys/fs/cgroup/memory"),)), device_cgroup=False),
         "r.yaml:5:9: this host has no pids cgroup controller"),
    ],
)  # fmt: skip
def test_rules_checked_against_the_host(text: str, facts: Facts, expected: str) -> None:
    with pytest.raises(RecipeError) as e:
        plan_of(RES + text, facts)
    assert str(e.value) == expected


def test_no_cgroups_at_all() -> None:
    with pytest.raises(RecipeError) as e:
        plan_of(BASE, Facts(cgroups=CgroupFacts(version=0, mounts=()), device_cgroup=False))
    assert "no cgroup filesystem" in str(e.value)


HYBRID = """\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 25 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
29 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
"""


def test_detect_v1_with_comounted_controllers(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(HYBRID)
    cg = detect_cgroups(str(tmp_path / "mountinfo"))
    assert cg.version == 1
    assert cg.mounts == (
        ("cpu", "/sys/fs/cgroup/cpu,cpuacct"),
        ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
        ("pids", "/sys/fs/cgroup/pids"),
    )
    # one cgroup per hierarchy, not per controller: cpu and cpuacct share one dir
    assert cgroups.cgroup_dirs(Facts(cgroups=cg), "box") == [
        "/sys/fs/cgroup/cpu,cpuacct/ctrsh/box",
        "/sys/fs/cgroup/pids/ctrsh/box",
    ]
    assert not cgroups._devices_hierarchy(cg)


def test_detect_this_host() -> None:
    cg = detect_cgroups()
    unified = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    assert cg.version == (2 if unified else 1)
