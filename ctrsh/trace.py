"""The trace: what runs, on stderr, as a valid shell script (commands as-is, notes as comments)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

from .plan import PHASES, Step


@dataclass
class Trace:
    out: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    _phase: str = ""
    _skipped: set[str] = field(default_factory=set)

    def _write(self, text: str, color: str) -> None:
        if self.quiet:
            return
        try:
            if self.out.isatty() and not os.environ.get("NO_COLOR"):
                text = f"\033[{color}m{text}\033[0m"
            print(text, file=self.out, flush=True)
        except (OSError, ValueError):
            # stderr is gone (a closed pipe, a hung-up terminal): the teardown
            # must still run, so go quiet rather than fail.
            self.quiet = True

    def note(self, text: str) -> None:
        self._write(f"# {text}", "2")

    def command(self, text: str) -> None:
        self._write(text, "1")

    def step(self, step: Step) -> None:
        if step.phase != self._phase:
            self._phase = step.phase
            self.note(f"{step.phase}: {PHASES[step.phase]}")
        self.command(step.command)

    def skip(self, step: Step) -> None:
        if step.creates not in self._skipped:
            self._skipped.add(step.creates or "")
            self.note(f"{step.phase}: {step.creates} exists, skipping the steps that make it")
