"""The per-name lock: held for a container's whole life, so one name is one container.

`flock(2)` on STATE_DIR.NAME.lock (next to the state dir, not in it: the lock
must exist before any step runs and outlive the state dir's removal). A
foreground `apply` holds it itself; a detached one hands its open file to the
holder shell, which keeps it while PID 1 lives (an flock belongs to the open
file, shared by every process that inherited it). So while the lock is held
the container is running, and a second `apply` or a `destroy` knows it — by
the kernel's word, not by a path that a crash could leave behind.

The file says who holds it (a pid). It is removed by whoever tears the
container down, while still holding it; a locker that finds the file gone or
replaced after it got its lock tries again (the classic unlink race).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import suppress
from dataclasses import dataclass

LOCK_FD = 9  # the descriptor a detached container's holder keeps the lock on


def lock_path(state_dir: str, name: str) -> str:
    return f"{state_dir}.{name}.lock"


@dataclass
class NameLock:
    path: str
    fd: int = -1

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False if someone holds it."""
        # The state dir's parent: apply's first step (`mkdir -p STATE_DIR`) would make it anyway.
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            if not _lock_soon(fd):
                os.close(fd)
                return False
            if _same_file(fd, self.path):
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return True
            os.close(fd)  # removed by its last holder meanwhile: lock the new one
        return False

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self, remove: bool = True) -> None:
        """Drop the lock; remove the file first when the container is gone (else keep it for the holder)."""
        if self.fd < 0:
            return
        if remove:
            with suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def _lock_soon(fd: int, tries: int = 10) -> bool:
    """Exclusive, without waiting for a holder — but over a probe (`ctrsh ps`'s is_held) that
    holds it for a moment: a few tries, 10 ms apart."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i + 1 < tries:
                time.sleep(0.01)
    return False


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def is_held(path: str) -> bool:
    """Is the lock at path held by anyone? Probed with a shared lock, dropped at once (/proc/locks
    cannot tell: it hides a lock whose taker, the detaching ctrsh, has exited)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def holder(path: str) -> int | None:
    """The pid written in the lock file by its holder."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
