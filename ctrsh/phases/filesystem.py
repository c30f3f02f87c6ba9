"""Phase filesystem: assemble the container's mounts inside its mount namespace.

Every mount here is made through `nsenter --mount`, so it exists only in the
container's mount namespace: the host never sees it, and it disappears with
the namespace. That is why these steps need no undo of their own.
"""

from __future__ import annotations

from ..plan import Step
from ..recipe import Namespace
from . import Context

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
             ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"))


def steps(c: Context) -> list[Step]:
    p = c.paths
    root = p.rootfs
    inside = c.nsenter("mount")

    def mount(argv: tuple[str, ...], why: str, *also: Namespace) -> Step:
        return Step("filesystem", (*c.nsenter("mount", *also), *argv), why)

    upper, work = f"{p.state}/upper", f"{p.state}/work"
    out = [
        Step(
            "filesystem",
            ("mkdir", upper, work, root),
            "The container's writable layer (upper), overlayfs scratch space (work), and its root mount point.",
        ),
        mount(
            ("mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={p.image('busybox')},upperdir={upper},workdir={work}", root),
            "Root filesystem: the shared image read-only below, this container's own writes above.",
        ),
        mount(
            ("mount", "-t", "tmpfs", "-o", "nosuid,strictatime,mode=0755,size=65536k", "tmpfs", f"{root}/dev"),
            "A fresh, empty /dev: the container gets only the devices created below, not the host's disks.",
        ),
    ]
    for name, major, minor in DEVICES:
        out.append(
            Step(
                "filesystem",
                (*inside, "mknod", "-m", "666", f"{root}/dev/{name}", "c", str(major), str(minor)),
                f"/dev/{name}: character device {major}:{minor}, one of the six every container gets.",
            )
        )
    for target, name in DEV_LINKS:
        out.append(
            Step("filesystem", (*inside, "ln", "-s", target, f"{root}/dev/{name}"), f"/dev/{name} -> {target}, as on any Linux.")
        )
    out += [
        Step("filesystem", (*inside, "mkdir", f"{root}/dev/pts", f"{root}/dev/shm"), "Mount points for ptys and shared memory."),
        mount(
            ("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec", "devpts",
             f"{root}/dev/pts"),
            "The container's own pty instance (newinstance): it cannot see the host's terminals.",
        ),
        mount(
            ("mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=65536k", "shm", f"{root}/dev/shm"),
            "/dev/shm for POSIX shared memory, private to the container, 64 MiB like Docker.",
        ),
        mount(
            ("mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{root}/sys"),
            "/sys read-only; mounted from the container's network namespace so it lists only its interfaces.",
            "net",
        ),
    ]
    return out
