"""Phase filesystem: assemble the container's mounts inside its mount namespace.

Every mount here is made through `nsenter --mount`, so it exists only in the
container's mount namespace: the host never sees it, and it disappears with
the namespace. That is why these steps need no undo of their own.
"""

from __future__ import annotations

from .. import owner
from ..plan import Argv, Step
from ..recipe import Namespace
from . import Context, etcfiles, rootfs, volumes
from .security import TOOLS

# Where ctrsh itself mounts in every container: /proc, /dev, /sys, the tools and the old root.
FIXED_DIRS = ("/proc", "/dev", "/sys", TOOLS, "/.oldroot", "/etc")
FIXED_FILES = ("/etc/ld.so.preload",)


INSTALL_EACH = 'for f; do install -m 0644 /dev/null "$f" || exit; done'


def _files_why(files: list[str]) -> str:
    over = [f for f in files if f not in FIXED_FILES]
    return (
        "Likewise, as empty files (mode 0644): "
        + (f"{', '.join(over)}, mounted over; and " if over else "")
        + "an empty /etc/ld.so.preload: setpriv runs after pivot_root, and its loader must not load a library "
        "the image names there."
    )


def mountpoints(c: Context) -> tuple[list[str], list[str]]:
    """(directories, files) inside the rootfs that ctrsh mounts onto, each directory's parents
    listed before it, so that `mkdir` without -p makes them all with the mode it is given."""
    dirs: list[str] = []
    extra = [*volumes.mountpoints(c), *etcfiles.mountpoints(c)]  # the recipe's volumes, /etc/hosts...
    files = [*FIXED_FILES, *(path for path, is_dir in extra if not is_dir)]
    extra_dirs = [path for path, is_dir in extra if is_dir]
    for path in (*FIXED_DIRS, *extra_dirs, *(f.rsplit("/", 1)[0] for f in files)):
        parts = path.strip("/").split("/")
        if parts == [""]:  # the parent of a file mounted at the top (/secret) is / itself
            continue
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)
    return dirs, files


def steps(c: Context) -> list[Step]:
    p = c.paths
    root = p.rootfs

    def inside(argv: Argv, why: str, *also: Namespace) -> Step:
        return Step("filesystem", (*c.nsenter("mount", *also), *argv), why)

    containers = f"{c.facts.data_dir}/containers"
    dirs, files = mountpoints(c)
    nodev = "" if c.facts.device_cgroup else ",nodev"
    ro = "ro," if c.recipe.readonly else ""
    if "net" in c.namespaces:
        sys_why = "/sys read-only, mounted from the container's network namespace so it lists only its interfaces."
    else:
        sys_why = "/sys read-only. With no network namespace of its own it lists the host's interfaces."
    uid, gid = c.root_ids()
    owned = c.userns  # a user namespace: what root inside writes must belong to its host ids
    as_root = f",uid={uid},gid={gid}" if owned else ""
    return [
        *rootfs.shift_steps(c),
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
            ("mkdir", "-m", "0755", p.upper, *(f"{p.upper}{d}" for d in dirs)),
            "Its writable layer (upper), 0755 whatever the umask as it becomes the mode of the container's /; "
            "in it, every place ctrsh mounts onto, made a real directory in the container's own (fresh, trusted) "
            "upper layer: a symlink the image ships at /proc, /dev, /etc... is hidden, so it cannot redirect a mount.",
        ),
        Step(
            "filesystem",
            # One step, one `install` a file (with more files it takes the last for a dir).
            ("sh", "-c", INSTALL_EACH, "ctrsh-files", *(f"{p.upper}{f}" for f in files)),
            _files_why(files),
        ),
        *(
            [
                Step(
                    "filesystem",
                    ("chown", "-R", f"{uid}:{gid}", p.upper, p.work),
                    f"The writable layer belongs to root inside (host {uid}:{gid}): the container's / and the "
                    "dirs ctrsh made in it are root's own inside, not nobody's.",
                )
            ]
            if owned
            else []
        ),
        *volumes.parent_modes(c, rootfs.lower_dir(c)),
        inside(
            ("mount", "-t", "overlay", "overlay", "-o",
             f"{ro}lowerdir={rootfs.lower_dir(c)},upperdir={p.upper},workdir={p.work}{nodev}", root),
            "Root filesystem: the shared image read-only below, this container's own writes above (upper)."
            + ("" if not nodev else " nodev: without a device cgroup, no device node on it may be opened.")
            + (" Mounted read-only (readonly: true): writes fail with EROFS." if c.recipe.readonly else ""),
        ),
        inside(
            ("mount", "-t", "tmpfs", "-o", "nosuid,strictatime,mode=0755,size=65536k", "tmpfs", f"{root}/dev"),
            "A fresh, empty /dev: the container gets only the devices put there next, never the host's disks.",
        ),
        inside(
            ("cp", "-a", f"{p.dev_template}/.", f"{root}/dev/"),
            "Fill /dev from the template: six devices, the fd links, the pts, shm and mqueue mount points.",
        ),
        *(
            [
                inside(
                    ("chown", f"{uid}:{gid}", f"{root}/dev"),
                    "/dev itself belongs to root inside (its devices stay the host's root's: nobody inside).",
                )
            ]
            if owned
            else []
        ),
        inside(
            ("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec", "devpts",
             f"{root}/dev/pts"),
            "The container's own pty instance (newinstance): it cannot see the host's terminals.",
        ),
        inside(
            ("mount", "-t", "tmpfs", "-o", f"nosuid,nodev,noexec,mode=1777,size=65536k{as_root}", "shm",
             f"{root}/dev/shm"),
            "/dev/shm for POSIX shared memory, private to the container, 64 MiB as in Docker.",
        ),
        inside(
            ("mount", "-t", "mqueue", "-o", "nosuid,nodev,noexec", "mqueue", f"{root}/dev/mqueue"),
            "/dev/mqueue for POSIX message queues, those of the container's IPC namespace.",
            "ipc",
        ),
        inside(("mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{root}/sys"), sys_why, "net"),
        *rootfs.record_image(c), *volumes.steps(c), *etcfiles.steps(c),
    ]  # fmt: skip
