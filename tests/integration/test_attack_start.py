"""Weak spots of the start itself (process.py). Each test FAILS while the hole exists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from .conftest import ROOT, Ctrsh


def recipe(name: str, args: list[str], extra: str = "", process_extra: str = "") -> str:
    return f"name: {name}\nrootfs: {{busybox: {{}}}}\n{extra}process:\n{process_extra}  args: {json.dumps(args)}\n"


def test_a_cwd_that_cannot_be_made_fails_the_start(ctrsh: Ctrsh) -> None:
    """`cd "$cwd" 2>/dev/null || { mkdir -p "$cwd" && cd "$cwd"; }` under sh -e: when mkdir fails,
    the && list inside the group does not trip -e, so the command runs in / instead (Docker fails)."""
    text = recipe("test-atk-nocwd", ["/bin/pwd"], process_extra="  cwd: /proc/no-such-dir\n")
    r = ctrsh.run("apply", "-q", ctrsh.recipe(text))
    assert r.returncode != 0, f"ran anyway, in {r.stdout.strip()!r}"


def test_container_args_are_not_host_tools(ctrsh: Ctrsh) -> None:
    """preflight.tools() takes every word after a `--` in any step's argv as a host program, and the
    process step's argv ends with the container's own args: `[echo, --, x]` fails as 'missing x'."""
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-atk-dashdash", ["/bin/echo", "--", "no-such-host-tool"])))
    assert (r.returncode, r.stdout) == (0, "-- no-such-host-tool\n"), r.stderr


@contextmanager
def sleeper(ctrsh: Ctrsh, name: str, extra: str = "") -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A running container; yields ctrsh's process and the host pids in the container's mount ns."""
    text = recipe(name, ["/bin/sh", "-c", "echo ready; exec sleep 60"], extra)
    proc = subprocess.Popen(ctrsh.cmd("apply", "-q", ctrsh.recipe(text)), env=ctrsh.env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        if proc.stdout.readline() != "ready\n":
            proc.wait(timeout=60)
            raise AssertionError(f"the container did not start: {proc.stderr.read()}")
        mnt = os.stat(f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt")
        pids = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            with suppress(OSError):
                ns = os.stat(f"/proc/{entry}/ns/mnt")
                if (ns.st_dev, ns.st_ino) == (mnt.st_dev, mnt.st_ino):
                    pids.append(int(entry))
        yield proc, pids
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def nspid(pid: int) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1:] for line in f if line.startswith("NSpid:"))


@pytest.mark.xfail(
    strict=True, reason="known hazard: pivot_root moves the root of the unshare parent too; it opens nothing after"
)
def test_host_side_helpers_are_not_rooted_in_the_container(ctrsh: Ctrsh) -> None:
    """pivot_root(2) moves the root of *every* process of the mount namespace whose root was the old
    one: the `unshare --fork` parent (and script(1) with terminal: true), which live in the host's
    PID namespace with every capability, end up with the container's rootfs - a tree the container
    writes as root - as their `/`. Today they open nothing afterwards; any later lookup (NSS, locale,
    /etc/localtime, a helper exec) would be served by the container."""
    with sleeper(ctrsh, "test-atk-helpers") as (_, pids):
        inits = [p for p in pids if len(nspid(p)) > 1 and nspid(p)[-1] == "1"]
        helpers = [p for p in pids if len(nspid(p)) == 1]
        assert inits and helpers, (pids, inits)
        container_root = os.stat(f"/proc/{inits[0]}/root/")
        rooted = [p for p in helpers if os.stat(f"/proc/{p}/root/").st_ino == container_root.st_ino
                  and os.stat(f"/proc/{p}/root/").st_dev == container_root.st_dev]  # fmt: skip
    assert not rooted, f"host-side processes {rooted} have the container's rootfs as their root"


@pytest.mark.parametrize(
    "user",
    [
        "root",
        pytest.param(
            "1000",
            marks=pytest.mark.xfail(
                strict=True, reason="known gap: a uid change clears PDEATHSIG; destroy kills it by cgroup"
            ),
        ),
    ],
)
def test_container_dies_with_its_unshare_parent(ctrsh: Ctrsh, user: str) -> None:
    """`unshare --kill-child` sets PDEATHSIG on PID 1, but the kernel clears it when setpriv changes
    the uid (security.user). `kill -9 %1` on a shell job reaches ctrsh and the unshare parent (the
    job's process group) but not PID 1 (a session of its own): a root container dies then, a
    non-root one keeps running, orphaned, until someone runs `ctrsh destroy`."""
    name = f"test-atk-pdeath-{user}"
    extra = "" if user == "root" else f"security: {{user: '{user}'}}\n"
    with sleeper(ctrsh, name, extra) as (proc, pids):
        try:
            inits = [p for p in pids if len(nspid(p)) > 1 and nspid(p)[-1] == "1"]
            parents = [p for p in pids if len(nspid(p)) == 1]
            assert inits and parents
            for p in [proc.pid, *parents]:  # ctrsh first, so no teardown runs
                with suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            alive = True
            for _ in range(50):
                try:
                    with open(f"/proc/{inits[0]}/stat") as f:
                        alive = f.read().split(") ")[1][0] != "Z"
                except OSError:
                    alive = False
                if not alive:
                    break
                time.sleep(0.1)
        finally:
            ctrsh.run("destroy", name)  # ctrsh was killed: clean up as a user would
    assert not alive, "PID 1 outlived ctrsh and the unshare that should take it down (PDEATHSIG was cleared)"
