"""Several containers in one recipe (`containers:`), for real: recipes/pod.yaml, failures, signals, kill -9.

Run through scripts/sandbox: the bridge and its rules live in the sandbox's network
namespace. Traffic only goes between the containers these tests make.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import IO

import pytest

from .conftest import ROOT, Ctrsh
from .test_container import wait_for_pid1

POD_OUTPUT = [
    "client fetched http://web/: hello from web",
    "client fetched http://web:8081/: side got over 127.0.0.1: hello from web",
]


def ps(ctrsh: Ctrsh) -> dict[str, dict[str, object]]:
    r = ctrsh.run("ps", "--json")
    assert r.returncode == 0, r.stderr
    return {row["name"]: row for row in json.loads(r.stdout)}


def group(name: str, *items: str, network: str = "{mode: bridge}") -> str:
    return f"name: {name}\nrootfs: {{busybox: {{}}}}\nnetwork: {network}\ncontainers:\n" + "".join(items)


def item(name: str, script: str, extra: str = "") -> str:
    return f"  - name: {name}\n{extra}    process:\n      args: [/bin/sh, -c, {json.dumps(script)}]\n"


SERVE = 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'


def start(ctrsh: Ctrsh, recipe: str, err: IO[str], *options: str) -> subprocess.Popen[str]:
    """A group apply in a session of its own (as from a terminal); its long trace goes to a file."""
    return subprocess.Popen(
        ctrsh.cmd("apply", *options, recipe), env=ctrsh.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
        text=True, start_new_session=True,
    )  # fmt: skip


def test_pod_recipe_fetches_by_name_and_over_localhost(ctrsh: Ctrsh) -> None:
    r = ctrsh.run("apply", "recipes/pod.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == POD_OUTPUT
    assert "# group pod: tear down the detached containers, newest first: side, web" in r.stderr
    assert r.stderr.index("group pod: container 1 of 3: web") < r.stderr.index("group pod: container 3 of 3: client")
    assert ps(ctrsh) == {}  # all three gone (and the host snapshot is unchanged)


def test_exported_pod_script_does_the_same(ctrsh: Ctrsh, tmp_path: Path) -> None:
    script = tmp_path / "pod.sh"
    assert ctrsh.run("export", "recipes/pod.yaml", "-o", str(script)).returncode == 0
    r = subprocess.run(["bash", str(script)], env=ctrsh.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == POD_OUTPUT


def test_a_failing_second_start_tears_down_the_first(ctrsh: Ctrsh) -> None:
    """b cannot start (its name is held by a running container of its own): a, started before it, is
    torn down; the container that held the name is not touched."""
    other = ctrsh.recipe("name: test-pod-b\nrootfs: {busybox: {}}\nprocess: {args: [sleep, '600'], init: true}\n")
    r = ctrsh.run("apply", "-d", other, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    try:
        recipe = ctrsh.recipe(group("test-pod", item("test-pod-a", SERVE), item("test-pod-b", "true")))
        r = ctrsh.run("apply", recipe)
        assert r.returncode == 125, r.stderr[-2000:]
        assert "a container named 'test-pod-b' is running" in r.stderr
        assert "group test-pod: tear down the detached containers, newest first: test-pod-a" in r.stderr
        rows = ps(ctrsh)
        assert "test-pod-a" not in rows and rows["test-pod-b"]["state"] == "running"
    finally:
        assert ctrsh.run("destroy", "--force", "test-pod-b").returncode == 0


def test_a_start_that_fails_at_a_step_tears_down_the_first(ctrsh: Ctrsh) -> None:
    """b's first step fails: an exited container named b is still there (its state dir). a is torn down,
    and b's leftovers, which are another container's, stay as they were until `destroy b`."""
    other = ctrsh.recipe("name: test-pod-b\nrootfs: {busybox: {}}\nprocess: {args: ['true']}\n")
    assert ctrsh.run("apply", "-d", other, timeout=60).returncode == 0
    state = Path(ctrsh.env["CTRSH_STATE_DIR"]) / "test-pod-b"
    for _ in range(500):
        if ps(ctrsh)["test-pod-b"]["state"] == "exited 0":
            break
    before = sorted(p.name for p in state.iterdir())
    try:
        recipe = ctrsh.recipe(group("test-pod", item("test-pod-a", SERVE), item("test-pod-b", "true")))
        r = ctrsh.run("apply", recipe)
        assert r.returncode == 125, r.stderr[-2000:]
        assert "a container named 'test-pod-b' already exists" in r.stderr
        assert "group test-pod: tear down the detached containers, newest first: test-pod-a" in r.stderr
        rows = ps(ctrsh)
        assert "test-pod-a" not in rows and rows["test-pod-b"]["state"] == "exited 0"
        assert sorted(p.name for p in state.iterdir()) == before
    finally:
        assert ctrsh.run("destroy", "test-pod-b").returncode == 0


def test_a_detached_container_whose_start_fails_fails_the_group(ctrsh: Ctrsh) -> None:
    """b's cwd cannot be made (read-only root): its PID 1 ends just after pivot_root. Once c has started
    the group sees it ended (before or once c has started), shows its log, tears down what started,
    newest first, and d never starts."""
    sleeper = "    process: {args: [sleep, '600'], init: true}\n"
    bad = "    readonly: true\n    process: {args: [sleep, '600'], cwd: /nowhere}\n"
    recipe = ctrsh.recipe(
        group("test-pod", f"  - name: test-pod-a\n{sleeper}", f"  - name: test-pod-b\n{bad}",
              f"  - name: test-pod-c\n{sleeper}", item("test-pod-d", "echo never"))
    )  # fmt: skip
    r = ctrsh.run("apply", recipe)
    assert r.returncode == 125, r.stderr[-2000:]
    assert "ctrsh: test-pod-b ended at once (exited 1); the last lines of its log:" in r.stderr
    assert "mkdir: can't create directory '/nowhere': Read-only file system" in r.stderr
    # b may be seen dead before c starts (then c never starts) or just after: either way newest first
    assert any(
        f"tear down the detached containers, newest first: {order}" in r.stderr
        for order in ("test-pod-c, test-pod-b, test-pod-a", "test-pod-b, test-pod-a")
    ), r.stderr[-2000:]
    assert "container 4 of 4" not in r.stderr and "never" not in r.stdout
    assert ps(ctrsh) == {}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_apply_tears_down_all(ctrsh: Ctrsh, tmp_path: Path, sig: int) -> None:
    wait = "echo ready; exec sleep 600"  # PID 1 sleep: no handler for SIGINT or SIGTERM, so ctrsh stops it
    recipe = ctrsh.recipe(
        group("test-pod", item("test-pod-a", SERVE), item("test-pod-b", wait, "    network: {mode: container, "
              "container: test-pod-a}\n"), item("test-pod-c", wait))
    )  # fmt: skip
    with open(tmp_path / "err", "w+") as err:
        proc = start(ctrsh, recipe, err)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/test-pod-c/ns/mnt", "sleep")
        assert {n: r["group"] for n, r in ps(ctrsh).items()} == dict.fromkeys(
            ("test-pod-a", "test-pod-b", "test-pod-c"), "test-pod"
        )
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # a terminal's Ctrl-C: the whole foreground process group
        else:
            proc.send_signal(sig)
        assert proc.wait(timeout=120) == 128 + sig
        err.seek(0)
        trace = err.read()
    assert "tear down the detached containers, newest first: test-pod-b, test-pod-a" in trace
    assert ps(ctrsh) == {}


@pytest.mark.parametrize("by", ["names", "group"])
def test_kill_9_of_apply_then_destroy(ctrsh: Ctrsh, tmp_path: Path, by: str) -> None:
    recipe = ctrsh.recipe(
        group("test-pod", item("test-pod-a", SERVE), item("test-pod-c", "echo ready; exec sleep 600"))
    )
    with open(tmp_path / "err", "w") as err:
        proc = start(ctrsh, recipe, err)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/test-pod-c/ns/mnt", "sleep")
        proc.kill()
        proc.wait(timeout=30)
    assert ps(ctrsh)["test-pod-c"]["state"] == "stopped"  # its apply is gone; a still runs under its holder
    for name in ("test-pod-c", "test-pod-a") if by == "names" else ("test-pod",):  # newest first
        d = ctrsh.run("destroy", "--force", name)
        assert d.returncode == 0, d.stderr[-2000:]
    assert ps(ctrsh) == {}


def test_apply_d_detaches_all_and_destroy_of_the_group_removes_them(ctrsh: Ctrsh) -> None:
    recipe = ctrsh.recipe(group("test-pod", item("test-pod-a", SERVE), item("test-pod-c", "exec sleep 600")))
    r = ctrsh.run("apply", "-d", recipe)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "group test-pod runs detached" in r.stderr
    rows = ps(ctrsh)
    assert {n: (r["state"], r["group"]) for n, r in rows.items()} == {
        "test-pod-a": ("running", "test-pod"),
        "test-pod-c": ("running", "test-pod"),
    }
    table = ctrsh.run("ps").stdout.splitlines()
    assert table[0].split() == ["NAME", "GROUP", "STATE", "PID", "UPTIME", "COMMAND"]
    # the client reaches the server by name, while both run detached
    got = ctrsh.run("exec", "test-pod-c", "wget", "-q", "-O-", "http://test-pod-a/")
    assert got.stdout == "hello from test-pod-a\n", got.stderr
    refused = ctrsh.run("destroy", "test-pod")
    assert refused.returncode != 0 and "not destroyed" in refused.stderr  # running: needs --force, as for one
    d = ctrsh.run("destroy", "--force", "test-pod")
    assert d.returncode == 0, d.stderr[-2000:]
    assert d.stderr.index("test-pod-c") < d.stderr.index("test-pod-a")  # newest first
    assert ps(ctrsh) == {}
