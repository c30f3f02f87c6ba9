"""Phase rootfs: provide the image the container's root filesystem is made from.

Images are built once into the data dir and reused: every step here `creates`
the image path, so a second apply skips them all. The build happens in
IMAGE.tmp and is renamed at the end, so a half-built image is never used.
"""

from __future__ import annotations

from ..plan import Argv, Step
from . import Context

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
    ("/proc/kcore", "core"),
)

# For each applet path busybox lists (bin/ls, usr/bin/env), a link relative to
# its directory (../bin/busybox, ../../bin/busybox): relative links stay right
# wherever the tree is mounted, where absolute ones would point into the host.
LINK_APPLETS = """cd "$1"
for p in $(bin/busybox --list-full); do
  case $p in */*/*) t=../../bin/busybox ;; *) t=../bin/busybox ;; esac
  [ -e "$p" ] || ln -s "$t" "$p"
done"""

# Enough account data for `id`, `ps` and `ls -l` to show names.
WRITE_ETC = r"""printf "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n" >"$1/etc/passwd"
printf "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n" >"$1/etc/group"
"""

LAYOUT = ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "etc", "root", "tmp")


def steps(c: Context) -> list[Step]:
    return busybox_image(c) + dev_template(c)


def busybox_image(c: Context) -> list[Step]:
    image = c.paths.image("busybox")
    tmp = f"{image}.tmp"

    def build(argv: Argv, why: str, undo: Argv | None = None) -> Step:
        return Step("rootfs", argv, why, undo=undo, creates=image, keep=True)

    return [
        build(("rm", "-rf", "--one-file-system", tmp), "Clear what an earlier, interrupted build may have left."),
        build(
            ("mkdir", "-p", *(f"{tmp}/{d}" for d in LAYOUT)),
            "Lay out a new busybox image beside its final place, renamed into place when complete.",
            undo=("rm", "-rf", "--one-file-system", tmp),
        ),
        build(("chmod", "1777", f"{tmp}/tmp"), "/tmp is writable by all, with the sticky bit, as on any Linux."),
        build(
            ("cp", c.facts.busybox, f"{tmp}/bin/busybox"),
            "A static busybox needs no libraries: this one file is every command in the image.",
        ),
        build(
            ("sh", "-c", LINK_APPLETS, "ctrsh-link", tmp),
            "One relative symlink per applet (usr/bin/env -> ../../bin/busybox), valid wherever the tree is mounted.",
        ),
        build(("sh", "-c", WRITE_ETC, "ctrsh-etc", tmp), "Minimal /etc/passwd and /etc/group, so tools show names."),
        build(("mv", "-T", tmp, image), "Publish the finished image in one rename; later applies reuse it."),
    ]


def dev_template(c: Context) -> list[Step]:
    """The contents of every container's /dev, made once with mknod and ln, copied in at each start.

    Copying a template (`cp -a`) is one command per container instead of a
    dozen; the nodes themselves are made here, where a learner can see them.
    """
    dev = c.paths.dev_template
    tmp = f"{dev}.tmp"

    def build(argv: Argv, why: str, undo: Argv | None = None) -> Step:
        return Step("rootfs", argv, why, undo=undo, creates=dev, keep=True)

    out = [
        build(("rm", "-rf", "--one-file-system", tmp), "Clear what an earlier, interrupted build may have left."),
        build(
            ("mkdir", "-p", f"{tmp}/pts", f"{tmp}/shm", f"{tmp}/mqueue"),
            "A template for /dev, with mount points for ptys, shared memory and message queues.",
            undo=("rm", "-rf", "--one-file-system", tmp),
        ),
    ]
    for name, major, minor in DEVICES:
        out.append(
            build(
                ("mknod", "-m", "666", f"{tmp}/{name}", "c", str(major), str(minor)),
                f"/dev/{name}: character device {major}:{minor}, one of the six devices every container gets.",
            )
        )
    for target, name in DEV_LINKS:
        out.append(build(("ln", "-s", target, f"{tmp}/{name}"), f"/dev/{name} -> {target}, as on any Linux."))
    out.append(build(("mv", "-T", tmp, dev), "Publish the /dev template in one rename."))
    return out
