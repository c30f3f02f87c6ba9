"""Host files and hostile input, as root: private dirs, only ctrsh's own dirs removed, no planted tools run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh

SLEEPER = "name: {name}\nrootfs: {{busybox: {{}}}}\nprocess: {{args: [/bin/sh, -c, 'echo ready; exec sleep 60']}}\n"


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv") or "setpriv"
    return subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv], capture_output=True, text=True
    )


@pytest.fixture
def open_dirs() -> Iterator[dict[str, str]]:
    """State and data dirs that any user could reach if ctrsh let them (the suite's own are under a 0700
    tmpfs, where uid 65534 is stopped before ctrsh's modes matter)."""
    base = tempfile.mkdtemp(prefix="ctrsh-open-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        yield {"CTRSH_STATE_DIR": f"{base}/run", "CTRSH_DATA_DIR": f"{base}/data"}
    finally:
        shutil.rmtree(base)


def test_other_users_cannot_reach_a_running_containers_files(open_dirs: dict[str, str], tmp_path: Path) -> None:
    ctrsh = Ctrsh(open_dirs, tmp_path)
    proc = subprocess.Popen(
        ctrsh.cmd("apply", "-q", ctrsh.recipe(SLEEPER.format(name="test-private"))),
        env=ctrsh.env, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        data = open_dirs["CTRSH_DATA_DIR"]
        upper = f"{data}/containers/test-private/upper"
        assert os.path.isdir(upper)
        # the check itself works: uid 65534 can list what is open (the data dir's parent)
        assert as_nobody("ls", os.path.dirname(data)).returncode == 0
        for path in (data, f"{data}/containers", f"{data}/containers/test-private", upper):
            r = as_nobody("ls", path)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r)
        state = f"{open_dirs['CTRSH_STATE_DIR']}"
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(f"{state}/test-private").st_mode) == 0o700
        assert as_nobody("ls", f"{state}/test-private").returncode != 0
        assert stat.S_IMODE(os.stat(upper).st_mode) == 0o755  # the container's / keeps its usual mode
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert not os.path.exists(f"{open_dirs['CTRSH_DATA_DIR']}/containers/test-private")


def test_umask_does_not_open_or_close_the_dirs(ctrsh: Ctrsh) -> None:
    """With a caller's umask of 077 the container's / is still 0755 (else a non-root PID 1 could not use it)."""
    recipe = ctrsh.recipe("name: test-umask\nrootfs: {busybox: {}}\nprocess: {args: [/bin/stat, -c, '%a', /]}\n")
    r = subprocess.run(
        ["sh", "-c", 'umask 077; exec "$@"', "sh", *ctrsh.cmd("apply", "-q", recipe)],
        env=ctrsh.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "755\n"), r.stderr


def look_alikes(ctrsh: Ctrsh, name: str) -> tuple[Path, Path]:
    state = Path(ctrsh.env["CTRSH_STATE_DIR"]) / name
    layer = Path(ctrsh.env["CTRSH_DATA_DIR"]) / "containers" / name
    for d in (state, layer):
        d.mkdir(parents=True)
        (d / "precious").write_text("not ctrsh's\n")
    return state, layer


def remove_look_alikes(*dirs: Path) -> None:
    for d in dirs:
        shutil.rmtree(d)
    for d in dirs:  # the parents the test made, if now empty
        for parent in (d.parent, d.parent.parent):
            if parent.name in ("run", "containers") and parent.exists() and not any(parent.iterdir()):
                parent.rmdir()


def test_destroy_leaves_a_look_alike_alone(ctrsh: Ctrsh) -> None:
    state, layer = look_alikes(ctrsh, "test-lookalike")
    try:
        r = ctrsh.run("destroy", "test-lookalike")
        assert r.returncode == 1
        assert r.stderr == (
            "ctrsh: teardown incomplete:\n"
            f"left {state} alone: no ctrsh ownership mark (.ctrsh-owner)\n"
            f"left {layer} alone: no ctrsh ownership mark (.ctrsh-owner)\n"
        )
        assert (state / "precious").read_text() == (layer / "precious").read_text() == "not ctrsh's\n"
        r = ctrsh.run("apply", ctrsh.recipe(SLEEPER.format(name="test-lookalike")))
        assert r.returncode == 125 and "already exists" in r.stderr  # and apply will not use it either
        assert sorted(p.name for p in state.iterdir()) == sorted(p.name for p in layer.iterdir()) == ["precious"]
    finally:
        remove_look_alikes(state, layer)


def test_destroy_refuses_another_instances_mark_and_a_foreign_journal(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """A marked state dir whose journal asks for something ctrsh never undoes: that entry is not run."""
    state, layer = look_alikes(ctrsh, "test-journal")
    victim = tmp_path / "victim"
    victim.mkdir()
    try:
        os.chmod(state, 0o700)
        os.chmod(layer, 0o700)
        dirs = f"state-dir {ctrsh.env['CTRSH_STATE_DIR']} data-dir {ctrsh.env['CTRSH_DATA_DIR']}"
        (state / ".ctrsh-owner").write_text(f"ctrsh container test-journal {dirs}\n")  # as the mark step writes it
        other = f"state-dir /run/other-ctrsh data-dir {ctrsh.env['CTRSH_DATA_DIR']}"
        (layer / ".ctrsh-owner").write_text(f"ctrsh container test-journal {other}\n")  # another instance's
        evil = [["rm", "-rf", "--one-file-system", str(victim)], ["rm", "-rf", "--one-file-system", str(layer)]]
        (state / "journal").write_text(json.dumps({"undo": evil}))
        r = ctrsh.run("destroy", "test-journal")
        assert r.returncode == 1
        assert r.stderr == (
            "ctrsh: teardown incomplete:\n"
            f"left {layer} alone: its .ctrsh-owner is another container's or another ctrsh instance's\n"
            f"journal entry not run (not an undo ctrsh makes for 'test-journal'): rm -rf --one-file-system {victim}\n"
        )
        assert victim.is_dir() and (layer / "precious").exists()
    finally:
        remove_look_alikes(state, layer)


def test_a_tool_planted_in_the_callers_path_is_not_run(ctrsh: Ctrsh, tmp_path: Path) -> None:
    planted = tmp_path / "bin"
    planted.mkdir()
    marker = tmp_path / "planted-ran"
    for tool in ("mkdir", "mount", "ip"):
        (planted / tool).write_text(f'#!/bin/sh\necho "$0" >>{marker}\nexec /usr/bin/env -u PATH {tool} "$@"\n')
        (planted / tool).chmod(0o755)
    env = {**ctrsh.env, "PATH": f"{planted}:{ctrsh.env['PATH']}"}
    r = subprocess.run(
        ctrsh.cmd("apply", ctrsh.recipe(SLEEPER.format(name="test-path").replace("exec sleep 60", "true"))),
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ready\n"
    assert not marker.exists(), marker.read_text()


def test_export_onto_a_symlink_to_a_device_is_refused(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """First onto the test's own null device (same 1:3): only once that is refused is /dev/null tried,
    so a regression chmods the test's node, never the host's /dev/null."""
    own = tmp_path / "null"
    os.mknod(own, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(own, 0o666)
    recipe = ctrsh.recipe(SLEEPER.format(name="test-export-o"))
    for target in (str(own), "/dev/null"):
        before = os.stat(target)
        link = tmp_path / "run.sh"
        link.symlink_to(target)
        r = ctrsh.run("export", recipe, "-o", str(link))
        assert r.returncode == 1 and "it exists and is a symlink" in r.stderr, r.stderr
        after = os.stat(target)
        assert (after.st_mode, after.st_uid, after.st_rdev, after.st_size) == (
            before.st_mode,
            before.st_uid,
            before.st_rdev,
            before.st_size,
        )
        assert link.is_symlink() and os.readlink(link) == target
        link.unlink()


def test_apply_refuses_dirs_another_user_can_write(ctrsh: Ctrsh, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 65534, 65534)  # a dir uid 65534 owns: it could plant links where ctrsh works
    r = subprocess.run(
        ctrsh.cmd("apply", ctrsh.recipe(SLEEPER.format(name="test-shared")), "--state-dir", f"{shared}/run"),
        env=ctrsh.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        f"ctrsh: state dir {shared}/run: {shared} is not root's, or others can write to it; "
        "ctrsh runs as root there and would follow a link another user planted\n"
    )
    assert list(shared.iterdir()) == []
