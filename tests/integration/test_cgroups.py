"""Limits that bite, read off the container's real cgroup: a fork bomb, a memory hog, a CPU burner,
a process that escapes its namespaces, and device nodes the container makes but must not open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from ctrsh.facts import detect
from ctrsh.phases import cgroups

from .conftest import ROOT, Ctrsh


def recipe(name: str, script: str, extra: str = "") -> str:
    return f"name: {name}\nrootfs: {{busybox: {{}}}}\n{extra}process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"


def cgroup(ctrsh: Ctrsh, name: str, controller: str) -> Path:
    facts = detect(ctrsh.env["CTRSH_STATE_DIR"], ctrsh.env["CTRSH_DATA_DIR"])
    d = cgroups.cgroup_dir(facts, name, controller)
    assert d is not None, f"this host has no {controller} controller"
    return Path(d)


def counters(path: Path) -> dict[str, int]:
    """A `key value` file (pids.events, cpu.stat, memory.events) as a dict."""
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


@contextmanager
def running(ctrsh: Ctrsh, text: str) -> Iterator[subprocess.Popen[str]]:
    """`ctrsh apply` of a container that prints `started` and then waits for a line on its stdin.
    However the test ends, the container is told to finish (its stdin closes), so it ends by itself."""
    proc = subprocess.Popen(
        ctrsh.cmd("apply", "-q", ctrsh.recipe(text)), env=ctrsh.env, cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line == "started\n", proc.stderr.read() if proc.stderr else ""
        yield proc
    finally:
        with suppress(BrokenPipeError):
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()  # ctrsh stops the container and tears down
            proc.wait(timeout=60)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate("\n", timeout=60)
    return proc.returncode, out, err


def test_fork_bomb_stops_at_pids_max(ctrsh: Ctrsh) -> None:
    bomb = "bomb() { bomb | bomb & }; bomb 2>/dev/null; echo started; read line"
    with running(ctrsh, recipe("test-bomb", bomb, "resources: {pids: 64}\n")) as proc:
        pids = cgroup(ctrsh, "test-bomb", "pids")
        assert (pids / "pids.max").read_text() == "64\n"
        # pids.peak (kernel 6.x) is the kernel's own high-water mark; sampling pids.current is the
        # fallback, and under load it can miss the peak (the bomb's shells die as forks are refused).
        has_peak = (pids / "pids.peak").exists()
        most, deadline = 0, time.monotonic() + 30  # a bound for a broken limit, not a timing assertion
        while (not (has_peak or most >= 64) or not counters(pids / "pids.events").get("max")) and (
            time.monotonic() < deadline
        ):
            most = max(most, int((pids / "pids.current").read_text()))
            time.sleep(0.01)
        refused = counters(pids / "pids.events")["max"]
        peak = int((pids / "pids.peak").read_text()) if has_peak else most
        # the host stays responsive: it can fork and run a command while the bomb is at its limit
        host = subprocess.run(["sh", "-c", "echo $((6 * 7))"], capture_output=True, text=True, timeout=10)
        code, out, err = finish(proc)
    print(f"fork bomb: {most} processes seen at most, peak {peak} (pids.peak), {refused} forks refused")
    assert refused > 0  # fork hit the limit
    assert peak == 64 and most <= 64  # it reached the limit and never passed it
    assert host.stdout == "42\n"
    assert (code, out, err) == (0, "", "")


def test_memory_hog_is_oom_killed(ctrsh: Ctrsh) -> None:
    # dd reads 64 MiB of zeros into one buffer: every page is touched, twice the limit
    hog = "name: test-oom\nrootfs: {busybox: {}}\nresources: {memory: 32M}\n"
    hog += "process: {args: [dd, if=/dev/zero, of=/dev/null, bs=64M, count=1]}\n"
    r = ctrsh.run("apply", ctrsh.recipe(hog))
    print(r.stderr.splitlines()[-20:])
    assert r.returncode == 137, r.stderr
    lines = [line for line in r.stderr.splitlines() if "OOM" in line]
    assert lines == [
        "ctrsh: the container was OOM-killed: the kernel's OOM killer killed 1 process at its memory limit "
        "(memory: 32M)"
    ]


def test_oom_of_a_child_keeps_pid1_exit_code(ctrsh: Ctrsh) -> None:
    hog = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?; exit 3"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-oom-child", hog, "resources: {memory: 32M}\n")))
    assert (r.returncode, r.stdout) == (3, "dd=137\n"), r.stderr
    assert r.stderr.endswith(
        "ctrsh: the kernel's OOM killer killed 1 process in the container at its memory limit (memory: 32M); "
        "its PID 1 exited 3\n"
    )


def test_no_oom_no_message(ctrsh: Ctrsh) -> None:
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-fits", "dd if=/dev/zero of=/dev/null bs=4M count=1 2>&1",
                                                     "resources: {memory: 32M}\n")))  # fmt: skip
    assert r.returncode == 0 and "OOM" not in r.stderr, r.stderr


def cpu_usage_ns(ctrsh: Ctrsh, name: str) -> int:
    facts = detect(ctrsh.env["CTRSH_STATE_DIR"], ctrsh.env["CTRSH_DATA_DIR"])
    if facts.cgroups.version == 1:
        return int((cgroup(ctrsh, name, "cpuacct") / "cpuacct.usage").read_text())
    return counters(cgroup(ctrsh, name, "cpu") / "cpu.stat")["usage_usec"] * 1000


def test_cpu_burner_gets_half_a_core(ctrsh: Ctrsh) -> None:
    burn = "burn() { while :; do :; done; }; burn & burn & echo started; read line"
    with running(ctrsh, recipe("test-cpu", burn, "resources: {cpus: 0.5}\n")) as proc:
        stat = cgroup(ctrsh, "test-cpu", "cpu") / "cpu.stat"
        used0, periods0, wall0 = cpu_usage_ns(ctrsh, "test-cpu"), counters(stat)["nr_periods"], time.monotonic()
        time.sleep(2)
        used1, stat1, wall1 = cpu_usage_ns(ctrsh, "test-cpu"), counters(stat), time.monotonic()
        code, _, err = finish(proc)
    used = (used1 - used0) / 1e9
    # CPU time per period the burners ran in (100 ms each): the kernel's own clock, no wall time needed
    per_period = used / ((stat1["nr_periods"] - periods0) * 0.1)
    print(f"cpus 0.5, two burners: {used:.3f} s of CPU in {wall1 - wall0:.3f} s ({used / (wall1 - wall0):.2f} cores), "
          f"{per_period:.2f} cores per active period, throttled {stat1['nr_throttled']} times")  # fmt: skip
    assert 0.35 <= per_period <= 0.65  # two unlimited burners would use a core each (1 on a single CPU)
    assert stat1["nr_throttled"] > 0
    assert code == 0, err


# A sleep in a new session and, where the container may (CAP_SYS_ADMIN), a new mount namespace; the
# container goes on once it runs as `sleep 1000`, out of its parent's process group and session.
ESCAPE = (
    "(unshare -m true 2>/dev/null && exec setsid unshare -m sleep 1000 || exec setsid sleep 1000) "
    "</dev/null >/dev/null 2>&1 & "
    "while [ \"$(tr '\\0' ' ' < /proc/$!/cmdline)\" != 'sleep 1000 ' ]; do sleep 0.05; done; "
)


# No PID namespace, and the capabilities to make a mount namespace of its own
ESCAPING = "namespaces: [mount]\nsecurity: {capabilities: all}\n"


def alive(pid: int) -> bool:
    """Running (a zombie is dead: its parent, PID 1 of the test's sandbox, may not reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["apply", "export"])
def test_escaped_process_is_killed_by_teardown(ctrsh: Ctrsh, tmp_path: Path, how: str) -> None:
    """No PID namespace: a process that starts a new session and (where it may) a new mount namespace is
    out of reach of `unshare --kill-child` and of a search by mount namespace. Its cgroup still holds it."""
    escape = ESCAPE + 'echo "pid=$! mnt=$(readlink /proc/$!/ns/mnt) (pid 1: $(readlink /proc/$$/ns/mnt))"'

    text = recipe(f"test-escape-{how}", escape, "namespaces: [mount]\n")
    if how == "apply":
        r = ctrsh.run("apply", "-q", ctrsh.recipe(text))
    else:
        script = tmp_path / "run.sh"
        assert ctrsh.run("export", ctrsh.recipe(text), "-o", str(script)).returncode == 0
        r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=ctrsh.env, timeout=120)
    pid_text, escaped_ns, container_ns = r.stdout.split("pid=")[1].split()[:3]
    pid = int(pid_text)
    try:
        assert r.returncode == 0, r.stderr
        assert escaped_ns != container_ns, r.stdout  # out of its mount namespace: only the cgroup holds it
        assert not alive(pid), "the escaped process outlived teardown"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_destroy_kills_the_cgroup_after_ctrsh_was_killed(ctrsh: Ctrsh) -> None:
    text = recipe("test-escape-kill9", ESCAPE + "echo started; read x", ESCAPING)
    proc = subprocess.Popen(ctrsh.cmd("apply", "-q", ctrsh.recipe(text)), env=ctrsh.env, cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    procs = cgroup(ctrsh, "test-escape-kill9", "pids") / "cgroup.procs"
    pids = [int(p) for p in procs.read_text().split()]
    os.killpg(proc.pid, signal.SIGKILL)  # ctrsh and the container's PID 1; the escaped sleep lives on
    proc.wait(timeout=30)
    try:
        left = [p for p in pids if alive(p)]
        assert left, "nothing escaped: the test proves nothing"
        r = ctrsh.run("destroy", "test-escape-kill9")
        assert r.returncode == 0, r.stderr
        assert "ctrsh-kill" in r.stderr
        assert not [p for p in pids if alive(p)]
    finally:
        ctrsh.run("destroy", "test-escape-kill9")  # whatever failed: leave the host clean
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def host_block_device() -> tuple[int, int] | None:
    """A real disk of this host (major, minor): what a hostile container would read."""
    for entry in sorted(os.listdir("/sys/dev/block")):
        name = os.path.basename(os.path.realpath(f"/sys/dev/block/{entry}"))
        size = Path(f"/sys/dev/block/{entry}/size")
        if not name.startswith(("loop", "ram", "zram")) and size.exists() and int(size.read_text()) > 0:
            major, minor = entry.split(":")
            return int(major), int(minor)
    return None


def test_device_cgroup_lets_only_the_standard_nodes_open(ctrsh: Ctrsh) -> None:
    facts = detect(ctrsh.env["CTRSH_STATE_DIR"], ctrsh.env["CTRSH_DATA_DIR"])
    if not cgroups.devices_enforced(facts):
        pytest.skip("cgroup v2: no device cgroup without eBPF; the security phase drops CAP_MKNOD instead")
    disk = host_block_device()
    if disk is None:
        pytest.skip("this host has no block device to try")
    script = (
        f"mknod /tmp/disk b {disk[0]} {disk[1]} && echo made-disk; "
        "head -c1 /tmp/disk >/dev/null && echo read-disk; "
        "mknod /tmp/kmsg c 1 11 && echo made-kmsg; head -c1 /tmp/kmsg >/dev/null && echo read-kmsg; "
        "head -c1 /dev/null && echo null-ok; "
        "echo zero=$(head -c1 /dev/zero | wc -c) urandom=$(head -c1 /dev/urandom | wc -c); "
        "echo x > /dev/null && echo write-null-ok"
    )
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-devices", script)))
    assert r.returncode == 0, r.stderr
    # Making a node is allowed (as Docker, which keeps CAP_MKNOD); opening one beyond the standard set is not.
    # /dev/kmsg (1:11) is what this test's host lets root open, so it fails without the device cgroup;
    # the disk may be refused by the host's own device rules too.
    assert r.stdout.splitlines() == ["made-disk", "made-kmsg", "null-ok", "zero=1 urandom=1", "write-null-ok"]
    assert "head: /tmp/disk: Operation not permitted" in r.stderr
    assert "head: /tmp/kmsg: Operation not permitted" in r.stderr


def test_the_container_sees_its_own_cgroup_as_root(ctrsh: Ctrsh) -> None:
    """Joined before `unshare --cgroup`: the cgroup namespace is rooted at the container's own cgroup."""
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-cgns", "cat /proc/self/cgroup")))
    assert r.returncode == 0, r.stderr
    facts = detect(ctrsh.env["CTRSH_STATE_DIR"], ctrsh.env["CTRSH_DATA_DIR"])
    mine = {line.split(":")[1]: line.split(":")[2] for line in r.stdout.splitlines()}
    for controller, _ in facts.cgroups.mounts:
        key = "" if facts.cgroups.version == 2 else next(k for k in mine if controller in k.split(","))
        assert mine[key] == "/", r.stdout


def test_shipped_forkbomb_recipe(ctrsh: Ctrsh) -> None:
    from .test_container import shipped

    r = ctrsh.run("apply", "-q", ctrsh.recipe(shipped("forkbomb", "test-forkbomb")), timeout=60)
    assert (r.returncode, r.stdout) == (0, "a fork bomb is running; pids: 64 holds it; it ends in 5 s\n"), r.stderr


def test_shipped_limits_recipe(ctrsh: Ctrsh) -> None:
    from .test_container import shipped

    r = ctrsh.run("apply", "-q", ctrsh.recipe(shipped("limits", "test-limits")))
    assert r.returncode == 0, r.stderr
    assert {line.rsplit(":", 1)[1] for line in r.stdout.splitlines()} == {"/"}  # its own cgroup is its root


def test_v2_join_and_kill_on_a_real_cgroup2(ctrsh: Ctrsh) -> None:
    """These hosts are cgroup v1, but a hybrid host's `unified` mount is a real cgroup2 (with no
    controllers): the v2 join and teardown (`cgroup.kill`, then rmdir) run there for real."""
    from ctrsh.facts import CgroupFacts, Facts

    root = "/sys/fs/cgroup/unified"
    if not os.path.exists(f"{root}/cgroup.procs"):
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified (a pure v1 or a pure v2 host)")
    v2 = CgroupFacts(version=2, mounts=(), root=root)
    facts = Facts(state_dir=os.path.normpath(ctrsh.env["CTRSH_STATE_DIR"]), cgroups=v2, device_cgroup=False)
    (mine,) = cgroups.cgroup_dirs(facts, "test-v2")
    parents = cgroups.parents(facts)
    subprocess.run(["mkdir", "-p", *parents], check=True)
    try:
        subprocess.run(["mkdir", mine], check=True)
        tree = "sleep 1000 & sleep 1000 & setsid sleep 1000 </dev/null >/dev/null & echo started; exec sleep 1000"
        proc = subprocess.Popen(
            [*cgroups.join_argv(facts, "test-v2"), "sh", "-c", tree], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        pids = [int(p) for p in Path(f"{mine}/cgroup.procs").read_text().split()]
        assert proc.pid in pids and len(pids) == 4, pids  # joined before its first instruction; children follow
        undo = cgroups.kill_undo(facts, "test-v2")
        assert os.path.exists(f"{mine}/cgroup.kill")  # the kernel has it (5.14+): one write kills them all
        subprocess.run(undo, check=True, timeout=30)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert not [p for p in pids if alive(p)] and not os.path.exists(mine)
        subprocess.run(undo, check=True, timeout=30)  # again: undoing what is gone succeeds
    finally:
        subprocess.run(cgroups.kill_undo(facts, "test-v2"), timeout=30)
        subprocess.run(["sh", "-c", cgroups.RMDIR_UNUSED, "ctrsh-rmdir", *parents], check=True)
    assert not os.path.exists(parents[0])
