"""Run a Plan for real through `sh`: trace each step, journal its undo, roll back on failure.

The container's own process runs in the foreground on the user's terminal;
when it exits (or a step fails, or ctrsh is interrupted) the journaled undos
run in reverse, so the host ends as it began.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from . import oom, procs, safepath
from .errors import StepFailed
from .journal import Journal
from .plan import Argv, Plan, join
from .signals import Interrupted, Signals, shielded
from .trace import Trace

TAIL_LINES = 8  # how much of a failed command's output to show


def _sh() -> Any:
    import sh  # lazy: ~50 ms of import that plan and export never need

    return sh


def run_step(argv: Argv) -> None:
    """Run one command to completion, raising StepFailed with its output's tail.

    In a session of its own, out of reach of the terminal's Ctrl-C: a step is
    never cut in half (a bind mount made but not yet made private, say). ctrsh
    gets the signal and acts on it once the step is done and its undo recorded.
    """
    sh = _sh()
    program = safepath.resolve(argv[0])
    if program is None:
        raise StepFailed(_failure(argv, f"command not found in {safepath.SAFE_PATH}", b""))
    try:
        sh.Command(program)(*argv[1:], _tty_out=False, _in=None, _new_session=True, _env=safepath.environ())
    except sh.ErrorReturnCode as e:
        raise StepFailed(_failure(argv, f"exit code {e.exit_code}", e.stderr or e.stdout)) from None
    except sh.CommandNotFound:
        raise StepFailed(_failure(argv, "command not found", b"")) from None


def run_live(argv: Argv) -> None:
    """Run a long step (an image build) with its own output shown live on stderr, as its progress.

    Not in a session of its own: Ctrl-C reaches it, so minutes of download can
    be interrupted (the journaled undo then removes the half-made work dir).
    """
    import subprocess

    try:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), check=False).returncode
    except FileNotFoundError:
        raise StepFailed(_failure(argv, "command not found", b"")) from None
    if code != 0:
        raise StepFailed(_failure(argv, f"exit code {code}", b"(its output is above)"))


def _failure(argv: Argv, how: str, output: bytes) -> str:
    lines = output.decode(errors="replace").rstrip().splitlines()[-TAIL_LINES:]
    detail = "".join(f"\n    {line}" for line in lines)
    return f"{join(argv)}\n  {how}{detail}"


def run_foreground(argv: Argv, relay: bool = False) -> int:
    """Run the container; return its exit code (128+N for signal N).

    relay: a container without a terminal of its own must not hold the caller's terminal either —
    a terminal's descriptors are usually open for reading too, so it could read what the user
    types, or change the terminal's settings. So when stdout or stderr is a terminal, that stream
    reaches it through a pipe that ctrsh copies to the terminal (as `docker run` without -t does),
    and a terminal on stdin is replaced by /dev/null."""
    sh = _sh()
    env = {"_env": safepath.environ()}
    if not (relay and (os.isatty(1) or os.isatty(2))):
        return _exit_code(sh, argv, {"_fg": True, **env})
    with _relayed() as (out, err, stdin):
        options = {"_out": out, "_err": err, "_in": stdin, "_tty_in": False, "_tty_out": False, **env}
        return _exit_code(sh, argv, options)


def _exit_code(sh: Any, argv: Argv, options: dict[str, Any]) -> int:
    program = safepath.resolve(argv[0])
    if program is None:
        raise StepFailed(_failure(argv, f"command not found in {safepath.SAFE_PATH}", b""))
    try:
        sh.Command(program)(*argv[1:], **options)
    except sh.ErrorReturnCode as e:
        code: int = e.exit_code
        return 128 - code if code < 0 else code
    except sh.CommandNotFound:
        raise StepFailed(_failure(argv, "command not found", b"")) from None
    return 0


@contextmanager
def _relayed() -> Iterator[tuple[int, int, int]]:
    """(stdout, stderr, stdin) for the container: a pipe for each of our streams that is a terminal,
    copied to it by a thread; the stream itself otherwise."""
    threads, ours = [], []
    fds = []
    for fd in (1, 2):
        if os.isatty(fd):
            r, w = os.pipe()
            t = threading.Thread(target=_copy, args=(r, fd), daemon=True)
            t.start()
            threads.append(t)
            ours.append(w)
            fds.append(w)
        else:
            fds.append(fd)
    stdin = os.open(os.devnull, os.O_RDONLY) if os.isatty(0) else 0
    try:
        yield fds[0], fds[1], stdin
    finally:
        for w in ours:
            os.close(w)  # the container's copies are closed by now, or soon by teardown's kill
        if stdin:
            os.close(stdin)
        for t in threads:
            t.join(timeout=2)


def _copy(src: int, dst: int) -> None:
    with suppress(OSError):
        while chunk := os.read(src, 65536):
            os.write(dst, chunk)
    os.close(src)


def say(text: str) -> bool:
    """Print to stderr if it is still there; a closed pipe must not stop a rollback."""
    try:
        print(text, file=sys.stderr, flush=True)
        return True
    except (OSError, ValueError):
        return False


def undo_all(journal: Journal, trace: Trace, mnt_nsfile: str) -> list[str]:
    """Run the journal's undos newest first, carrying on past failures; return what failed."""
    failed = []
    with shielded(trace):
        procs.kill_all(mnt_nsfile, trace)
        if journal.undos:
            trace.note("teardown: undo what ran, newest first")
        for undo in reversed(journal.undos):
            trace.command(join(undo))
            try:
                run_step(undo)
                journal.forget(undo)
            except (StepFailed, OSError) as e:  # OSError: the journal could not be saved; carry on
                failed.append(str(e))
    return failed


def apply(plan: Plan, journal_path: str, mnt_nsfile: str, trace: Trace, oom_counter: str | None = None) -> int:
    """Run every step, then tear down; return the container's exit code.

    oom_counter: the container's cgroup file counting OOM kills, read once the container has
    exited (and before teardown removes it) to say so, and exit 137, if the OOM killer struck."""
    journal = Journal(journal_path)
    signals = Signals(mnt_nsfile, trace)
    code = 0
    with signals.installed():
        try:
            for index, step in enumerate(plan.steps, 1):
                signals.check()
                if step.creates and os.path.lexists(step.creates):
                    trace.skip(step)
                    continue
                trace.step(step)
                if step.foreground:
                    with signals.container():
                        code = run_foreground(step.argv, relay=not plan.terminal)
                    if signals.stopped_by_ctrl_c:
                        code = 130
                    elif count := oom.kills(oom_counter):
                        code, line = oom.verdict(count, code, oom.limit(oom_counter))
                        say(line)
                else:
                    try:
                        (run_live if step.progress else run_step)(step.argv)
                    except StepFailed as e:
                        signals.check()  # the step died of the user's Ctrl-C: that is an interruption
                        raise StepFailed(f"step {index} of {len(plan.steps)} failed ({step.phase}): {e}") from None
                journal.record(step)
            signals.check()
        except BaseException as e:
            if isinstance(e, StepFailed):  # say what failed before the rollback output, not after it
                e.reported = say(f"ctrsh: {e}")
            done = len(journal.undos)
            failed = undo_all(journal, trace, mnt_nsfile)
            why = "interrupted" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "failed"
            tail = f", {len(failed)} undo(s) failed" if failed else ""
            trace.note(f"{why}: rolled back {done} steps{tail}")
            for f in failed:
                say(f"ctrsh: undo failed: {f}")
            raise
        failed = undo_all(journal, trace, mnt_nsfile)
    if failed:
        raise StepFailed("teardown incomplete:\n" + "\n".join(failed))
    return code
