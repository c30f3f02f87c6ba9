"""Run a Plan for real through `sh`: trace each step, journal its undo, roll back on failure.

The container's own process runs in the foreground on the user's terminal;
when it exits (or a step fails, or ctrsh is interrupted) the journaled undos
run in reverse, so the host ends as it began.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from .errors import StepFailed
from .plan import PHASES, Argv, Plan, Step

TAIL_LINES = 8  # how much of a failed command's output to show


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: stop and roll back, like Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Trace:
    """Prints what runs on stderr as a valid shell script: commands as-is, notes as comments."""

    out: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    _phase: str = ""
    _skipped: set[str] = field(default_factory=set)

    def _color(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.out.isatty() and not os.environ.get("NO_COLOR") else text

    def note(self, text: str) -> None:
        if not self.quiet:
            print(self._color(f"# {text}", "2"), file=self.out, flush=True)

    def command(self, text: str) -> None:
        if not self.quiet:
            print(self._color(text, "1"), file=self.out, flush=True)

    def step(self, step: Step) -> None:
        if step.phase != self._phase:
            self._phase = step.phase
            self.note(f"{step.phase}: {PHASES[step.phase]}")
        self.command(step.command)

    def skip(self, step: Step) -> None:
        if step.creates not in self._skipped:
            self._skipped.add(step.creates or "")
            self.note(f"{step.phase}: {step.creates} exists, skipping the steps that build it")


@dataclass
class Journal:
    """The undos of what has run, on disk, so `ctrsh destroy` can finish the job after a crash."""

    path: str
    entries: list[tuple[Argv, str | None]] = field(default_factory=list)  # (undo, the `creates` it belongs to)

    @property
    def undos(self) -> list[Argv]:
        return [undo for undo, _ in self.entries]

    def record(self, step: Step) -> None:
        if step.undo:
            self.entries.append((step.undo, step.creates))
        if step.creates and os.path.lexists(step.creates):
            # The cached result is complete: the undos that cleaned up a half-built one are moot.
            self.entries = [e for e in self.entries if e[1] != step.creates]
        self.save()

    def save(self) -> None:
        # The journal lives in the container's state dir, which a step creates;
        # until then it is kept in memory only (rollback still has it).
        if os.path.isdir(os.path.dirname(self.path)):
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"undo": self.undos}, f)
            os.replace(tmp, self.path)

    def forget(self, undo: Argv) -> None:
        """An undo has run: drop it, so a later `ctrsh destroy` does not run it again."""
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i][0] == undo:
                del self.entries[i]
                break
        self.save()

    @classmethod
    def load(cls, path: str) -> Journal:
        with open(path) as f:
            return cls(path, [(tuple(u), None) for u in json.load(f)["undo"]])


def _sh() -> Any:
    import sh  # lazy: ~70 ms of import that plan and export never need

    return sh


def run_step(argv: Argv, detached: bool = False) -> None:
    """Run one command to completion, raising StepFailed with its output's tail.

    detached: in a session of its own, out of reach of the terminal's Ctrl-C.
    """
    sh = _sh()
    try:
        sh.Command(argv[0])(*argv[1:], _tty_out=False, _in=None, _new_session=detached)
    except sh.ErrorReturnCode as e:
        raise StepFailed(_failure(argv, f"exit code {e.exit_code}", e.stderr or e.stdout)) from None
    except sh.CommandNotFound:
        raise StepFailed(_failure(argv, "command not found", b"")) from None


def _failure(argv: Argv, how: str, output: bytes) -> str:
    import shlex

    lines = output.decode(errors="replace").rstrip().splitlines()[-TAIL_LINES:]
    detail = "".join(f"\n    {line}" for line in lines)
    return f"{shlex.join(argv)}\n  {how}{detail}"


def run_foreground(argv: Argv) -> int:
    """Run the container on the user's terminal; return its exit code (128+N for signal N)."""
    sh = _sh()
    try:
        sh.Command(argv[0])(*argv[1:], _fg=True)
    except sh.ErrorReturnCode as e:
        code: int = e.exit_code
        return 128 - code if code < 0 else code
    except sh.CommandNotFound:
        raise StepFailed(_failure(argv, "command not found", b"")) from None
    return 0


@contextmanager
def interrupts_roll_back() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Interrupted (Ctrl-C already raises KeyboardInterrupt)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class CtrlC:
    """Ctrl-C while the container runs: the container's business first, as in a shell.

    The terminal delivers SIGINT to the container too. An interactive shell
    catches it and carries on, so ctrsh keeps waiting. But PID 1 of a PID
    namespace ignores any signal it has no handler for (the kernel protects
    init), so `sleep` would never stop; then ctrsh stops the container itself,
    as `docker run --init` would. A no-op handler, not SIG_IGN: ignored signals
    stay ignored across exec, and the container must be able to see its Ctrl-C.
    """

    mnt_nsfile: str
    trace: Trace
    stopped: bool = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        pids = container_pids(self.mnt_nsfile)
        if any(_is_init(pid) and not _catches(pid, signum) for pid in pids):
            self.stopped = True
            why = "Ctrl-C: the container's PID 1 ignores it, so stop the container"
            kill_leftovers(self.mnt_nsfile, self.trace, why)

    @contextmanager
    def active(self) -> Iterator[None]:
        old = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)


def _status(pid: int, field: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(field + ":")), "")
    except OSError:
        return ""


def _is_init(pid: int) -> bool:
    """PID 1 of a PID namespace below ours (NSpid lists the pid in each namespace level)."""
    levels = _status(pid, "NSpid").split()
    return len(levels) > 1 and levels[-1] == "1"


def _catches(pid: int, signum: int) -> bool:
    return bool(int(_status(pid, "SigCgt") or "0", 16) & (1 << (signum - 1)))


def container_pids(mnt_nsfile: str) -> list[int]:
    """Processes inside the container's mount namespace (what `ip netns pids` does for net)."""
    try:
        ino = os.stat(mnt_nsfile).st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino == ino:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def kill_leftovers(mnt_nsfile: str, trace: Trace, why: str = "processes still in the container") -> None:
    """Kill what still runs in the container (after ctrsh itself was interrupted or killed)."""
    pids = [p for p in container_pids(mnt_nsfile) if p != os.getpid()]
    if pids:
        trace.note(f"{why}:")
        trace.command("kill -KILL " + " ".join(map(str, pids)))
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def shielded(trace: Trace) -> Iterator[None]:
    """A teardown cut short leaves the host half-changed: let Ctrl-C and SIGTERM wait for it."""

    def handler(signum: int, frame: FrameType | None) -> None:
        trace.note(f"{signal.Signals(signum).name}: finishing the teardown first")

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def undo_all(journal: Journal, trace: Trace, mnt_nsfile: str) -> list[str]:
    """Run the journal's undos newest first, carrying on past failures; return what failed."""
    import shlex

    failed = []
    with shielded(trace):
        kill_leftovers(mnt_nsfile, trace)
        if journal.undos:
            trace.note("teardown: undo what ran, newest first")
        for undo in reversed(journal.undos):
            trace.command(shlex.join(undo))
            try:
                run_step(undo, detached=True)
                journal.forget(undo)
            except StepFailed as e:
                failed.append(str(e))
    return failed


def apply(plan: Plan, journal_path: str, mnt_nsfile: str, trace: Trace) -> int:
    """Run every step, then tear down; return the container's exit code."""
    journal = Journal(journal_path)
    total = len(plan.steps)
    code = 0
    try:
        with interrupts_roll_back():
            for index, step in enumerate(plan.steps, 1):
                if step.creates and os.path.lexists(step.creates):
                    trace.skip(step)
                    continue
                trace.step(step)
                if step.foreground:
                    ctrl_c = CtrlC(mnt_nsfile, trace)
                    with ctrl_c.active():
                        code = run_foreground(step.argv)
                    if ctrl_c.stopped:
                        code = 128 + signal.SIGINT
                else:
                    try:
                        run_step(step.argv)
                    except StepFailed as e:
                        raise StepFailed(f"step {index} of {total} failed ({step.phase}): {e}") from None
                journal.record(step)
    except BaseException as e:
        if isinstance(e, StepFailed):  # say what failed before the rollback output, not after it
            print(f"ctrsh: {e}", file=sys.stderr, flush=True)
            e.reported = True
        done = len(journal.undos)
        failed = undo_all(journal, trace, mnt_nsfile)
        why = "interrupted" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "failed"
        trace.note(
            f"{why}: rolled back {done} steps" + (f", {len(failed)} undo(s) failed" if failed else "")
        )
        for f in failed:
            print(f"ctrsh: undo failed: {f}", file=sys.stderr)
        raise
    failed = undo_all(journal, trace, mnt_nsfile)
    if failed:
        raise StepFailed("teardown incomplete:\n" + "\n".join(failed))
    return code
