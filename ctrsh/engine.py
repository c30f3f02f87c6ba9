"""Run a Plan for real through `sh`: trace each step, journal its undo, roll back on failure.

The container's own process runs in the foreground on the user's terminal;
when it exits (or a step fails, or ctrsh is interrupted) the journaled undos
run in reverse, so the host ends as it began.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from . import DEFAULT_GC, oom, safepath
from .errors import StepFailed
from .facts import Paths
from .fault import Fault
from .journal import Journal
from .plan import Argv, Plan, Step, join
from .signals import Interrupted, Signals, shielded
from .trace import Trace

TAIL_LINES = 8  # how much of a failed command's output to show


def _sh() -> Any:
    if "sh" not in sys.modules:
        import sh  # lazy: ~50 ms of import that plan and export never need

        # Loading is over (ctrsh/__init__.py collected rarely meanwhile): keep what is loaded out of
        # every later collection, and collect the garbage each sh call leaves (~115 objects in cycles)
        # at Python's usual pace again, so it does not pile up and make every later fork dearer.
        gc.freeze()
        gc.set_threshold(*DEFAULT_GC)
    import sh

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
    # stdin /dev/null, stdout and stderr files of our own (read only if it fails): sh then starts
    # no stdin thread and polls no pipes (CPU per call 7.5 -> 6.5 ms, measured with ctrsh loaded).
    with _captured() as (stdin, out, err):
        try:
            sh.Command(program)(*argv[1:], _in=stdin, _out=out, _err=err, _new_session=True, _env=safepath.environ())
        except sh.ErrorReturnCode as e:
            raise StepFailed(_failure(argv, f"exit code {e.exit_code}", _tail(err) or _tail(out))) from None
        except sh.CommandNotFound:
            raise StepFailed(_failure(argv, "command not found", b"")) from None


TAIL_BYTES = 65536  # of a failed step's output: enough for TAIL_LINES lines


@contextmanager
def _captured() -> Iterator[tuple[int, int, int]]:
    """(stdin, stdout, stderr) for a step: /dev/null, and two in-memory files (memfd)."""
    fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)]
    try:
        fds += [os.memfd_create("ctrsh-step-out"), os.memfd_create("ctrsh-step-err")]
        yield fds[0], fds[1], fds[2]
    finally:
        for fd in fds:
            os.close(fd)


def _tail(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES))


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


def run_foreground(argv: Argv, relay: bool = False, forward: bool = False) -> int:
    """Run the container; return its exit code (128+N for signal N).

    relay: a container without a terminal of its own must not hold the caller's terminal either —
    a terminal's descriptors are usually open for reading too, so it could read what the user
    types, or change the terminal's settings. So when stdout or stderr is a terminal, that stream
    reaches it through a pipe that ctrsh copies to the terminal (as `docker run` without -t does),
    and a terminal on stdin is replaced by /dev/null."""
    sh = _sh()
    env = {"_env": safepath.environ()}
    if not forward and not (relay and (os.isatty(1) or os.isatty(2))):
        return _exit_code(sh, argv, {"_fg": True, **env})
    with _relayed() as (out, err, stdin):
        options = {"_out": out, "_err": err, "_in": stdin, "_tty_in": False, "_tty_out": False, **env}
        return _forwarded(sh, argv, options) if forward else _exit_code(sh, argv, options)


def _forwarded(sh: Any, argv: Argv, options: dict[str, Any]) -> int:
    """Run argv, which calls setsid in its own process (each hop execs the next; exec without -t:
    no controlling terminal), and
    pass on the signals a terminal or `kill` sends to ctrsh — they no longer reach its process
    group, which is the session setsid made, led by the pid sh started."""
    import signal

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    running = _exit_code_bg(sh, argv, options)

    def forward(signum: int, _frame: object) -> None:
        with suppress(ProcessLookupError):
            os.killpg(running.pid, signum)

    before = {s: signal.signal(s, forward) for s in forwarded}
    try:
        return _waited(sh, running)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _exit_code_bg(sh: Any, argv: Argv, options: dict[str, Any]) -> Any:
    program = safepath.resolve(argv[0])
    if program is None:
        raise StepFailed(_failure(argv, f"command not found in {safepath.SAFE_PATH}", b""))
    return sh.Command(program)(*argv[1:], _bg=True, _bg_exc=False, **options)


def _waited(sh: Any, running: Any) -> int:
    try:
        running.wait()
    except sh.ErrorReturnCode as e:
        code: int = e.exit_code
        return 128 - code if code < 0 else code
    return 0


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


def undo_all(journal: Journal, trace: Trace) -> list[str]:
    """Run the journal's undos newest first, carrying on past failures; return what failed.

    An unsure undo (its step may never have taken effect: the one in flight when ctrsh was stopped
    or killed, or a shared step) that fails had nothing to undo: noted, not a failure."""
    failed = []
    with shielded(trace):
        # No kill here beyond the plan's own: the first undo is the cgroup kill (phases/cgroups.py),
        # which plan shows and export does too; every process of the container is in its cgroup.
        if journal.undos:
            trace.note("teardown: undo what ran, newest first")
        for undo in reversed(journal.undos):
            trace.command(join(undo))
            unsure = journal.is_unsure(undo)
            try:
                run_step(undo)
            except (StepFailed, OSError) as e:  # OSError: the journal could not be saved; carry on
                if already_undone(undo):
                    trace.note("(already undone: nothing left to undo)")
                elif unsure:
                    trace.note("(its step may never have run: nothing to undo)")
                else:
                    failed.append(str(e))
                    continue
            with suppress(OSError):
                journal.forget(undo)
    return failed


def mounted(path: str) -> bool:
    """Is path a mount point here (also a dir bind-mounted onto itself, which os.path.ismount misses)?"""
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return False
    # mountinfo escapes space, tab, newline and backslash as octal
    decoded = {p.encode().decode("unicode_escape") if "\\" in p else p for p in points}
    return os.path.normpath(path) in decoded


def already_undone(undo: Argv) -> bool:
    """Undos are idempotent: one that failed because what it removes is already gone (the mount
    went with its namespace, another teardown removed the netns) has nothing left to do."""
    if undo[:1] == ("umount",):
        return not mounted(undo[-1])
    if undo[:3] == ("ip", "netns", "delete"):
        return not os.path.lexists(f"/run/netns/{undo[3]}")
    if undo[:1] == ("rmdir",):
        return not os.path.lexists(undo[-1])
    return False


def target_exists(undo: Argv) -> bool | None:
    """Is what this undo removes there now? None where its shape does not tell."""
    from .firewall import LINK_UNDO

    if undo[:1] == ("umount",):
        return mounted(undo[-1])
    if undo[:3] == ("ip", "netns", "delete"):
        return os.path.lexists(f"/run/netns/{undo[3]}")
    if undo[:1] == ("rmdir",):
        return any(os.path.lexists(p) for p in undo[1:] if not p.startswith("-"))
    if undo[:3] == ("rm", "-rf", "--one-file-system"):
        return any(os.path.lexists(p) for p in undo[3:])
    if undo[:2] == ("sh", "-c") and undo[3:4] == ("ctrsh-kill",):
        return any(os.path.isdir(d) for d in undo[5:])
    if undo[:4] == ("sh", "-euc", LINK_UNDO, "ctrsh-undo"):
        return os.path.lexists(f"/sys/class/net/{undo[4]}")
    return None


def _faulted_before(fault: Fault | None, index: int, step: Step, journal: Journal) -> None:
    """Test fault injection (fault.py): step `index` fails without running."""
    if fault and fault.fails_before(index):
        raise StepFailed(_failure(step.argv, f"fault injected ({fault.mode}:{index}): failed before it ran", b""))


def _faulted_after(fault: Fault | None, index: int, step: Step, journal: Journal) -> None:
    """Test fault injection (fault.py): step `index` ran, and is reported as failed."""
    if fault and fault.fails_after(index):
        raise StepFailed(_failure(step.argv, f"fault injected ({fault.mode}:{index}): it ran, then failed", b""))


def run_detached(argv: Argv, lock_fd: int) -> None:
    """Start the holder (`setsid --fork`: it returns at once), with the lock's open file on fd 9
    (dup2 in the child only: ctrsh's own fd 9, if any, is left alone)."""
    from .lock import LOCK_FD

    src = lock_fd if lock_fd != LOCK_FD else os.dup(lock_fd)  # dup2 onto itself would keep close-on-exec
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, src, LOCK_FD),
    ]
    try:
        pid = os.posix_spawnp(argv[0], argv, dict(os.environ), file_actions=actions)
    except FileNotFoundError:
        raise StepFailed(_failure(argv, "command not found", b"")) from None
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if src != lock_fd:
        os.close(src)
    if code != 0:
        raise StepFailed(_failure(argv, f"exit code {code}", b""))


def _detach(plan: Plan, step: Step, paths: Paths, trace: Trace, signals: Signals, lock_fd: int) -> None:
    """The container's start step under the holder (lifecycle.HOLDER); back once PID 1 runs."""
    from . import lifecycle
    from .lock import LOCK_FD

    extra = lifecycle.command_step(paths, list(plan.command))
    trace.step(extra)
    run_step(extra.argv)
    held = lifecycle.holder_step(step, paths)
    trace.step(held)
    trace.note(f"(fd {LOCK_FD}: the name's lock, passed on to the holder)")
    run_detached(held.argv, lock_fd)
    signals.check()
    pid = lifecycle.wait_running(paths)
    if pid is None:
        state = lifecycle.status(paths.facts, paths.name).state
        say(f"ctrsh: {plan.name} ended at once ({state}): see `ctrsh logs {plan.name}`")
    else:
        trace.note(
            f"{plan.name} runs detached, PID 1 is {pid} on the host: "
            f"`ctrsh ps`, `ctrsh logs {plan.name}`, `ctrsh stop {plan.name}`, `ctrsh destroy {plan.name}`"
        )


def apply(
    plan: Plan,
    journal_path: str,
    mnt_nsfile: str,
    trace: Trace,
    oom_counter: str | None = None,
    grace: float | None = None,
    detach: Paths | None = None,
    lock_fd: int = -1,
) -> int:
    """Run every step, then tear down; return the container's exit code.

    oom_counter: the container's cgroup file counting OOM kills, read once the container has
    exited (and before teardown removes it) to say so, and exit 137, if the OOM killer struck.
    grace: seconds between SIGTERM and SIGKILL when ctrsh is told to stop the container.
    detach: run the container under a holder (lifecycle.HOLDER) and return once it runs, leaving
    the journal for `ctrsh stop`/`destroy` (the name's lock, open on lock_fd, is passed on to it)."""
    journal = Journal(journal_path)
    signals = Signals(mnt_nsfile, trace)
    from .fault import from_env

    fault = from_env()  # tests only (fault.py): None unless armed
    if grace is not None:
        signals.grace = grace
    code = 0
    with signals.installed():
        try:
            for index, step in enumerate(plan.steps, 1):
                signals.check()
                if step.creates and os.path.lexists(step.creates):
                    trace.skip(step)
                    journal.shared(step)
                    if fault:
                        fault.skipped(index)
                    continue
                if step.foreground and detach is not None:
                    try:
                        _faulted_before(fault, index, step, journal)
                        _detach(plan, step, detach, trace, signals, lock_fd)
                        _faulted_after(fault, index, step, journal)
                    except StepFailed as e:
                        signals.check()
                        raise StepFailed(f"step {index} of {len(plan.steps)} failed ({step.phase}): {e}") from None
                    if fault:
                        fault.kill_after(index)
                    return 0
                trace.step(step)
                # Was what the undo removes there before the step? Then a failure of the step leaves it
                # alone: it is not ours (`ip netns add x` failing because x exists must not delete x).
                existed = step.undo is not None and target_exists(step.undo)
                journal.intend(step)  # before it runs: a kill -9 mid-step still leaves its undo for destroy
                try:
                    _faulted_before(fault, index, step, journal)
                    if step.foreground:
                        with signals.container():
                            code = run_foreground(step.argv, relay=not plan.terminal)
                        if signals.stopped_by_ctrl_c:
                            code = 130
                        elif count := oom.kills(oom_counter):
                            code, line = oom.verdict(count, code, oom.limit(oom_counter))
                            say(line)
                    else:
                        (run_live if step.progress else run_step)(step.argv)
                    _faulted_after(fault, index, step, journal)
                except StepFailed as e:
                    signals.check()  # the step died of the user's Ctrl-C: that is an interruption
                    if existed:
                        # What its undo removes was there before: not ours to remove.
                        journal.failed(step)
                    # Else it may have taken effect before failing (`mkdir A A/b` made A, then failed on
                    # A/b): its undo stays, unsure, and rolls back whatever it made. (Undos whose target
                    # target_exists cannot tell check ownership themselves: rules tagged ctrsh:NAME,
                    # leases and shared pieces by this container's name, cgroup parents only if unused.)
                    raise StepFailed(f"step {index} of {len(plan.steps)} failed ({step.phase}): {e}") from None
                journal.done(step)
                if fault:
                    fault.kill_after(index)
            signals.check()
        except BaseException as e:
            if isinstance(e, StepFailed):  # say what failed before the rollback output, not after it
                e.reported = say(f"ctrsh: {e}")
            done = len(journal.undos)
            failed = undo_all(journal, trace)
            why = "interrupted" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "failed"
            tail = f", {len(failed)} undo(s) failed" if failed else ""
            trace.note(f"{why}: rolled back {done} steps{tail}")
            for f in failed:
                say(f"ctrsh: undo failed: {f}")
            raise
        failed = undo_all(journal, trace)
    if failed:
        raise StepFailed("teardown incomplete:\n" + "\n".join(failed))
    return code
