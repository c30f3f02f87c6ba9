"""The container's processes, found through its mount namespace (as `ip netns pids` does for net)."""

from __future__ import annotations

import os
import signal
from contextlib import suppress

from .trace import Trace


def container_pids(mnt_nsfile: str) -> list[int]:
    """Processes whose mount namespace is the one bound at mnt_nsfile (ctrsh itself excluded)."""
    try:
        st = os.stat(mnt_nsfile)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                ns = os.stat(f"/proc/{entry}/ns/mnt")
            except OSError:
                continue
            if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino):
                pids.append(int(entry))
    return pids


def kill_all(mnt_nsfile: str, trace: Trace, why: str = "processes still in the container") -> None:
    """SIGKILL everything in the container (PID 1's death takes its PID namespace with it)."""
    # script(1), the terminal relay of `terminal: true`, is spared: it ends by itself once PID 1 is
    # gone, after putting the caller's terminal back the way it was (SIGKILL would leave it raw).
    pids = [p for p in container_pids(mnt_nsfile) if _comm(p) != "script"]
    if pids:
        trace.note(f"{why}:")
        trace.command("kill -KILL " + " ".join(map(str, pids)))
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def signal_all(pids: list[int], signum: int, trace: Trace) -> None:
    name = signal.Signals(signum).name.removeprefix("SIG")
    trace.command(f"kill -{name} " + " ".join(map(str, pids)))
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _status(pid: int, key: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":")), "")
    except OSError:
        return ""


def is_init(pid: int) -> bool:
    """PID 1 of a PID namespace below ours (NSpid lists the pid in each namespace level)."""
    levels = _status(pid, "NSpid").split()
    return len(levels) > 1 and levels[-1] == "1"


def catches(pid: int, signum: int) -> bool:
    """Does the process take signum: a handler for it (SigCgt, a bit mask, bit N-1 for signal N), or
    blocked (SigBlk: the kernel queues a blocked signal even to init, and an init such as tini
    collects it with sigtimedwait)?"""
    if _comm(pid) == TINI:  # it waits in sigtimedwait, which hides its blocked set from /proc while it waits
        return True
    mask = int(_status(pid, "SigCgt") or "0", 16) | int(_status(pid, "SigBlk") or "0", 16)
    return bool(mask & (1 << (signum - 1)))


# `process.init`'s PID 1, which forwards every signal to the command. A container could name its own
# PID 1 so: then it gets SIGTERM (not SIGKILL at once) and, ignoring it, SIGKILL after the grace time.
TINI = "tini-static"
