"""The name lock, the journal's before-the-step undos, the holder step, ps output: no root needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ctrsh import lifecycle, lock
from ctrsh.facts import Facts, Paths
from ctrsh.journal import Journal
from ctrsh.plan import Step


def test_lock_is_exclusive_and_removed_by_its_last_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "run.x.lock")
    a, b = lock.NameLock(path), lock.NameLock(path)
    assert a.try_acquire()
    assert Path(path).read_text() == f"{os.getpid()}\n"
    assert lock.is_held(path)
    assert not b.try_acquire()  # another open file: refused (the same process, too)
    a.release()
    assert not Path(path).exists() and not lock.is_held(path)
    assert b.try_acquire()
    b.release()


def test_lock_passed_on_stays_held_after_its_taker_is_gone(tmp_path: Path) -> None:
    """A detached apply hands its descriptor to the holder: the lock outlives ctrsh."""
    path = str(tmp_path / "run.y.lock")
    held = lock.NameLock(path)
    assert held.try_acquire()
    child = subprocess.Popen(["sleep", "30"], pass_fds=(held.fd,))
    try:
        held.release(remove=False)  # ctrsh exits; the child keeps the open file
        assert lock.is_held(path)
        assert not lock.NameLock(path).try_acquire()
    finally:
        child.kill()
        child.wait()
    assert not lock.is_held(path)
    os.unlink(path)


def test_lock_taken_on_a_removed_file_is_retaken(tmp_path: Path) -> None:
    path = tmp_path / "run.z.lock"
    first = lock.NameLock(str(path))
    assert first.try_acquire()
    os.unlink(path)  # as its last holder does, just before letting go
    second = lock.NameLock(str(path))
    assert second.try_acquire()  # a new file: not the old one, still held by `first`
    assert path.exists()
    first.release(remove=False)
    second.release()


STEP = Step("namespaces", ("ip", "netns", "add", "x"), "why", undo=("ip", "netns", "delete", "x"))


def test_undo_is_journaled_before_its_step(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal"))
    j.intend(STEP)
    on_disk = Journal.load(j.path)
    assert on_disk.undos == [STEP.undo] and on_disk.is_unsure(STEP.undo)  # a kill -9 now leaves it
    j.done(STEP)
    assert not Journal.load(j.path).is_unsure(STEP.undo)


def test_a_step_that_failed_leaves_no_undo(tmp_path: Path) -> None:
    """`ip netns add x` failed because x exists: x is not ours to delete."""
    j = Journal(str(tmp_path / "journal"))
    j.intend(STEP)
    j.failed(STEP)
    assert Journal.load(j.path).undos == []


def test_a_shared_step_skipped_is_undone_if_possible(tmp_path: Path) -> None:
    shared = Step("namespaces", ("mkdir", "-p", "/s"), "why", undo=("rmdir", "--ignore-fail-on-non-empty", "/s"),
                  creates="/s")  # fmt: skip
    j = Journal(str(tmp_path / "journal"))
    j.shared(shared)
    assert j.undos == [shared.undo] and j.is_unsure(shared.undo)


def test_holder_step_runs_the_start_step_detached() -> None:
    paths = Paths(Facts(state_dir="/run/ctrsh"), "web")
    start = Step("process", ("nsenter", "--", "unshare", "--fork", "sleep", "9"), "why", foreground=True)
    held = lifecycle.holder_step(start, paths)
    assert held.argv[:5] == ("setsid", "--fork", "sh", "-c", lifecycle.HOLDER)
    assert held.argv[5:8] == ("ctrsh-holder", "/run/ctrsh/web", "/run/ctrsh.web.lock")
    assert held.argv[8:] == start.argv and not held.foreground


def test_holder_script_records_the_exit_code(tmp_path: Path) -> None:
    """The holder's own sh, run as apply -d runs it (without setsid's fork), with a command that exits 5."""
    lockfile = tmp_path / "l.lock"
    r = subprocess.run(
        ["sh", "-c", f"exec 9<>{lockfile}; exec sh -c \"$0\" ctrsh-holder \"$@\"", lifecycle.HOLDER,
         str(tmp_path), str(lockfile), "sh", "-c", "echo out; echo err >&2; exit 5"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "exit").read_text() == "5\n"
    assert (tmp_path / "log").read_text() == "out\nerr\n"
    assert int((tmp_path / "pid").read_text()) > 0


def test_ps_table_and_json() -> None:
    rows = [
        lifecycle.Status("web", "running", 4242, None, "sleep 9", True),
        lifecycle.Status("job", "exited 3", None, None, "sh -c 'exit 3'", True),
    ]
    assert lifecycle.render_ps(rows, False).splitlines() == [
        "NAME  STATE     PID   UPTIME  COMMAND",
        "web   running   4242  -       sleep 9",
        "job   exited 3  -     -       sh -c 'exit 3'",
    ]
    import json

    out = json.loads(lifecycle.render_ps(rows, True))
    assert [(r["name"], r["state"], r["pid"]) for r in out] == [("web", "running", 4242), ("job", "exited 3", None)]


def test_uptime() -> None:
    assert [lifecycle.uptime(s) for s in (5, 75, 3700, 90000)] == ["5s", "1m15s", "1h01m", "1d01h"]


def test_every_catchable_fatal_signal_is_handled() -> None:
    import signal

    from ctrsh.signals import STOPS

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGPIPE", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGXFSZ"):
        assert getattr(signal, name) in STOPS
    assert signal.SIGRTMIN in STOPS and signal.SIGRTMAX in STOPS
    assert signal.SIGSEGV not in STOPS and signal.SIGKILL not in STOPS


def test_ctrsh_imports_without_root() -> None:
    r = subprocess.run([sys.executable, "-c", "import ctrsh.lifecycle, ctrsh.lock"], capture_output=True, check=False)
    assert r.returncode == 0
