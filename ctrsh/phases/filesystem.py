"""Phase filesystem: assemble the container's mounts inside its mount namespace.

Every mount here is made through `nsenter --mount`, so it exists only in the
container's mount namespace: the host never sees it, and it disappears with
the namespace. That is why these steps need no undo of their own.
"""

from __future__ import annotations

from .. import owner
from ..plan import Argv, Step
from ..recipe import Namespace
from . import Context


def steps(c: Context) -> list[Step]:
    p = c.paths
    root = p.rootfs

    def inside(argv: Argv, why: str, *also: Namespace) -> Step:
        return Step("filesystem", (*c.nsenter("mount", *also), *argv), why)

    containers = f"{c.facts.data_dir}/containers"
    return [
        Step(
            "filesystem",
            ("mkdir", "-p", "-m", "0700", containers),
            "Where containers' writable layers live while they run (made once, kept); 0700: no other user "
            "can reach a file a container writes (a setuid binary, say).",
            creates=containers,
        ),
        Step(
            "filesystem",
            ("mkdir", "-m", "0700", p.layer, p.work),
            "This container's dir, private to root, and overlayfs' scratch dir (work), on disk.",
            undo=("rm", "-rf", "--one-file-system", p.layer),
        ),
        owner.mark_step("filesystem", p.layer, p),
        Step(
            "filesystem",
            ("mkdir", "-m", "0755", p.upper),
            "Its writable layer (upper): 0755 whatever the umask, as it becomes the mode of the container's /.",
        ),
        inside(
            ("mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={p.image('busybox')},upperdir={p.upper},workdir={p.work}", root),
            "Root filesystem: the shared image read-only below, this container's own writes above (upper).",
        ),
        inside(
            ("mount", "-t", "tmpfs", "-o", "nosuid,strictatime,mode=0755,size=65536k", "tmpfs", f"{root}/dev"),
            "A fresh, empty /dev: the container gets only the devices put there next, never the host's disks.",
        ),
        inside(
            ("cp", "-a", f"{p.dev_template}/.", f"{root}/dev/"),
            "Fill /dev from the template: six devices, the fd links, the pts and shm mount points.",
        ),
        inside(
            ("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec", "devpts",
             f"{root}/dev/pts"),
            "The container's own pty instance (newinstance): it cannot see the host's terminals.",
        ),
        inside(
            ("mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=65536k", "shm", f"{root}/dev/shm"),
            "/dev/shm for POSIX shared memory, private to the container, 64 MiB as in Docker.",
        ),
        inside(
            ("mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{root}/sys"),
            "/sys read-only, mounted from the container's network namespace so it lists only its interfaces.",
            "net",
        ),
    ]  # fmt: skip
