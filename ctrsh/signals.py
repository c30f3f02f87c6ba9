"""What SIGINT, SIGTERM and SIGHUP do while `apply` runs. Handlers never raise mid-command.

Between steps, a signal is only noted; the engine acts on it at the next safe
point (`check`), so no step can take effect without its undo being journaled.

While the container runs, Ctrl-C is the container's business first, as in a
shell: the terminal delivers it to the container, and an interactive shell
catches it and carries on. But PID 1 of a PID namespace ignores any signal it
has no handler for (the kernel protects init), so `sleep` would never stop;
then ctrsh stops the container itself, as `docker run --init` would. SIGTERM
and SIGHUP stop the container and roll back.

The handlers are Python functions, never SIG_IGN: ignored signals stay ignored
across exec, and the container must get default dispositions. For the same
reason SIGPIPE and SIGXFSZ, which Python ignores, get no-op handlers here.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from types import FrameType

from . import procs
from .trace import Trace

# Every signal whose default action ends ctrsh and that a handler can catch: each one stops the
# container and rolls back (SIGKILL cannot be caught: `ctrsh destroy` covers it). Not the faults a
# program raises on itself (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS): a handler that
# returns would fault again. SIGPIPE included: `ctrsh apply r.yaml 2>&1 | head` rolls back, as the
# exported script's PIPE trap does.
STOPS = tuple(
    getattr(signal, n)
    for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGPIPE", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGXCPU",
              "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGSTKFLT", "SIGABRT")
    if hasattr(signal, n)
) + tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))  # fmt: skip
RESET: tuple[int, ...] = ()  # (SIGPIPE and SIGXFSZ, which Python ignores, are in STOPS now)
GRACE = 10.0  # seconds between SIGTERM and SIGKILL, as `docker stop`


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(BaseException):
    """A signal asked ctrsh to stop: roll back, exit 128+signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(_name(signum))
        self.signum = signum


@dataclass
class Signals:
    mnt_nsfile: str
    trace: Trace
    container_running: bool = False
    pending: int | None = None  # a stop signal not yet acted on
    stopped_by_ctrl_c: bool = False
    grace: float = GRACE
    deadline: float | None = None  # while stopping: when SIGTERM's grace time is over
    hard: bool = False  # stopping with SIGKILL, repeated until the container is gone

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.container_running and signum == signal.SIGINT and not self.stopping:
            # The container runs in a session of its own, out of reach of the caller's terminal, so
            # ctrsh passes Ctrl-C on to it (as `docker run` does) — unless PID 1 has no handler for it:
            # the kernel drops such signals to a namespace's init, so then ctrsh stops the container.
            pids = procs.container_pids(self.mnt_nsfile)
            inits = [p for p in pids if procs.is_init(p)]
            if any(not procs.catches(p, signum) for p in inits):
                self.stopped_by_ctrl_c = True
                self._stop("Ctrl-C: the container's PID 1 ignores it, so stop it")
            else:
                for pid in inits or pids:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signum)
            return
        if self.stopped_by_ctrl_c and signum == signal.SIGINT:
            return  # a second Ctrl-C while stopping: the grace time runs on
        self.pending = self.pending or signum
        if self.container_running and not self.stopping:
            self._stop(f"{_name(signum)}: stop the container")

    @property
    def stopping(self) -> bool:
        return self.deadline is not None

    def _stop(self, why: str) -> None:
        """As `docker stop`: SIGTERM to PID 1, SIGKILL to all once the grace time is over. A PID 1
        of a PID namespace with no SIGTERM handler never gets it (the kernel drops it), so it is
        killed at once rather than after a grace time that cannot help."""
        pids = procs.container_pids(self.mnt_nsfile)
        inits = [p for p in pids if procs.is_init(p)]
        targets = inits or pids
        if not targets or any(procs.is_init(p) and not procs.catches(p, signal.SIGTERM) for p in targets):
            procs.kill_all(self.mnt_nsfile, self.trace, why)
            self.hard = True
        else:
            self.trace.note(f"{why}: SIGTERM, then SIGKILL after {self.grace:g} s")
            procs.signal_all(targets, signal.SIGTERM, self.trace)
        self.deadline = time.monotonic() + self.grace
        signal.setitimer(signal.ITIMER_REAL, 0.05)

    def check(self) -> None:
        if self.pending:
            raise Interrupted(self.pending)

    @contextmanager
    def container(self) -> Iterator[None]:
        """While the container runs. A stop signal that came just before is acted on now; one that
        comes while the container is still entering its namespaces finds no process there yet, so
        a timer repeats the kill until the container is gone."""
        self.check()
        self.container_running = True
        try:
            with handlers({signal.SIGALRM: self._rekill}):
                yield
        finally:
            self.container_running = False
            self.deadline = None
            self.hard = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _rekill(self, signum: int, frame: FrameType | None) -> None:
        if not (self.container_running and self.deadline is not None):
            return
        if self.hard:  # it may still be entering its namespaces: kill what is there by now
            procs.kill_all(self.mnt_nsfile, self.trace, "still stopping the container")
        elif time.monotonic() >= self.deadline:
            self.hard = True
            procs.kill_all(self.mnt_nsfile, self.trace, "the grace time is over: SIGKILL")
        signal.setitimer(signal.ITIMER_REAL, 0.05)

    def installed(self) -> AbstractContextManager[None]:
        return handlers({**dict.fromkeys(STOPS, self.handle), **dict.fromkeys(RESET, _ignore)})


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


Handler = Callable[[int, FrameType | None], None]


@contextmanager
def handlers(table: dict[int, Handler]) -> Iterator[None]:
    """Install these signal handlers for the duration, then put the old ones back."""
    old = {s: signal.signal(s, h) for s, h in table.items()}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def shielded(trace: Trace) -> Iterator[None]:
    """A teardown cut short leaves the host half-changed: Ctrl-C and SIGTERM wait for it."""

    def handler(signum: int, frame: FrameType | None) -> None:
        trace.note(f"{_name(signum)}: finishing the teardown first")

    with handlers(dict.fromkeys(STOPS, handler)):
        yield
