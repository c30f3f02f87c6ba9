"""Did the kernel's OOM killer strike in the container? Read off its memory cgroup after it exits."""

from __future__ import annotations

import os

# util-linux 2.38's `unshare --fork` exits 1 ("sigprocmask unblock failed") when its child dies of
# SIGKILL, instead of dying of it too: so an OOM-killed PID 1 reads as exit 1.
UNSHARE_SIGKILL_CODE = 1
SIGKILL_CODE = 128 + 9


def kills(counter: str | None) -> int:
    """The `oom_kill N` count of memory.oom_control (v1) or memory.events (v2); 0 if unreadable."""
    if counter is None:
        return 0
    try:
        with open(counter) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def limit(counter: str | None) -> str | None:
    """The memory limit next to the counter (v1 memory.limit_in_bytes, v2 memory.max), as `32M`."""
    if counter is None:
        return None
    folder = os.path.dirname(counter)
    for name in ("memory.limit_in_bytes", "memory.max"):
        try:
            with open(f"{folder}/{name}") as f:
                value = int(f.read())
        except (OSError, ValueError):
            continue
        if value >= 2**62:
            return None  # unlimited
        for unit, scale in (("G", 2**30), ("M", 2**20), ("k", 2**10)):
            if value % scale == 0:
                return f"memory: {value // scale}{unit}"
        return f"memory: {value}"
    return None


def verdict(count: int, code: int, limit: str | None) -> tuple[int, str]:
    """The exit code to report and the line that says what happened, for `count` OOM kills.

    PID 1 killed (137, or unshare's 1 for a SIGKILLed child) is reported as 137, as Docker does;
    if PID 1 survived a kill among its children, its own exit code stands."""
    at = f" at its memory limit ({limit})" if limit else ""
    what = f"{count} process{'es' if count > 1 else ''}"
    if code in (SIGKILL_CODE, UNSHARE_SIGKILL_CODE):
        return SIGKILL_CODE, f"ctrsh: the container was OOM-killed: the kernel's OOM killer killed {what}{at}"
    return code, f"ctrsh: the kernel's OOM killer killed {what} in the container{at}; its PID 1 exited {code}"
