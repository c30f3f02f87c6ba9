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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from types import FrameType

from . import procs
from .trace import Trace

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RESET = (signal.SIGPIPE, signal.SIGXFSZ)


class Interrupted(BaseException):
    """A signal asked ctrsh to stop: roll back, exit 128+signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Signals:
    mnt_nsfile: str
    trace: Trace
    container_running: bool = False
    pending: int | None = None  # a stop signal not yet acted on
    stopped_by_ctrl_c: bool = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.container_running and signum == signal.SIGINT:
            # The container runs in a session of its own, out of reach of the caller's terminal, so
            # ctrsh passes Ctrl-C on to it (as `docker run` does) — unless PID 1 has no handler for it:
            # the kernel drops such signals to a namespace's init, so then ctrsh stops the container.
            pids = procs.container_pids(self.mnt_nsfile)
            inits = [p for p in pids if procs.is_init(p)]
            if any(not procs.catches(p, signum) for p in inits):
                self.stopped_by_ctrl_c = True
                procs.kill_all(self.mnt_nsfile, self.trace, "Ctrl-C: the container's PID 1 ignores it, so stop it")
            else:
                for pid in inits or pids:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signum)
            return
        self.pending = self.pending or signum
        if self.container_running:
            procs.kill_all(self.mnt_nsfile, self.trace, f"{signal.Signals(signum).name}: stop the container")
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
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _rekill(self, signum: int, frame: FrameType | None) -> None:
        if self.container_running and self.pending:
            procs.kill_all(self.mnt_nsfile, self.trace, "still stopping the container")
            signal.setitimer(signal.ITIMER_REAL, 0.05)

    def installed(self) -> AbstractContextManager[None]:
        return handlers({**dict.fromkeys(STOPS, self.handle), **dict.fromkeys(RESET, _ignore)})


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


Handler = Callable[[int, FrameType | None], None]


@contextmanager
def handlers(table: dict[signal.Signals, Handler]) -> Iterator[None]:
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
        trace.note(f"{signal.Signals(signum).name}: finishing the teardown first")

    with handlers(dict.fromkeys(STOPS, handler)):
        yield
