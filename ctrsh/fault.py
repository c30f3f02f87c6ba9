"""Fault injection, for tests only: make step K of `apply` fail, or SIGKILL ctrsh right after it.

    CTRSH_FAULT=fail-before:K   step K fails before it runs (its command is not run)
    CTRSH_FAULT=fail-after:K    step K runs, then is reported as failed (it took effect)
    CTRSH_FAULT=kill:K          ctrsh SIGKILLs itself right after step K and its journal write

K is the step's number in `ctrsh plan` ("# K. why"), counted from 1, as a failing step is
named ("step K of N failed"). The fault strikes only if step K runs: a step skipped
because its result exists (a cached image) is not faulted, and ctrsh says so.

It is honoured only together with CTRSH_FAULT_INJECTION=break-this-apply, and then
always announced on stderr: a stray CTRSH_FAULT left in a root shell's environment must
not silently break containers (and `sudo` drops both by default). Without the second
variable a CTRSH_FAULT is ignored, with a warning.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from dataclasses import dataclass

VAR = "CTRSH_FAULT"
ARM = "CTRSH_FAULT_INJECTION"
ARMED = "break-this-apply"
MODES = ("fail-before", "fail-after", "kill")


@dataclass(frozen=True)
class Fault:
    mode: str
    step: int

    def fails_before(self, index: int) -> bool:
        return self.mode == "fail-before" and index == self.step

    def fails_after(self, index: int) -> bool:
        return self.mode == "fail-after" and index == self.step

    def kill_after(self, index: int) -> None:
        """After step `index` ran and its journal was written: die as `kill -9` would."""
        if self.mode == "kill" and index == self.step:
            _warn(f"fault injected: SIGKILL after step {index}")
            os.kill(os.getpid(), signal.SIGKILL)

    def skipped(self, index: int) -> None:
        if index == self.step:
            _warn(f"fault not injected: step {index} was skipped (its result exists)")


def _warn(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"ctrsh: {text}", file=sys.stderr, flush=True)


def from_env(environ: dict[str, str] | None = None) -> Fault | None:
    env = os.environ if environ is None else environ
    value = env.get(VAR)
    if not value:
        return None
    if env.get(ARM) != ARMED:
        _warn(f"ignoring {VAR}={value}: fault injection is for tests and needs {ARM}={ARMED} too")
        return None
    m = re.fullmatch(r"(fail-before|fail-after|kill):([1-9][0-9]{0,5})", value)
    if not m:
        _warn(f"ignoring {VAR}={value}: expected one of {', '.join(f'{x}:K' for x in MODES)}")
        return None
    fault = Fault(m.group(1), int(m.group(2)))
    _warn(f"TEST FAULT INJECTION ({VAR}={value}): this apply is broken on purpose")
    return fault
