"""Phase rootfs: provide the image the container's root filesystem is made from.

Images (busybox, debootstrap, tarball) are built once into DATA/images and
reused: every step here `creates` the image path, so a second apply skips them
all. Each build happens in a work dir of its own (IMAGE.tmp-CONTAINER) and is
published by one rename under the image's flock, so a half-built image is
never used and two first builds at once give one good image. A `directory`
source is used in place and never touched.
"""

from __future__ import annotations

import os

from .. import images
from ..plan import Argv, Phase, Step
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

# Enough account data for `id`, `ps` and `ls -l` to show names. umask 022: the
# image's modes are its own, not whatever umask ctrsh was started with.
WRITE_ETC = r"""umask 022
printf "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n" >"$1/etc/passwd"
printf "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n" >"$1/etc/group"
"""

# Every dir named (parents too, so none is made with the builder's umask).
LAYOUT = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "etc", "root", "tmp")

# Under the image's lock: the first complete build is published (one rename),
# a build that finishes second finds the image there and throws its own away.
# $1 = this build's work dir, $2 = the image, $3 = what it was built from.
PUBLISH = """if [ ! -e "$2" ]; then
  printf "%s\\n" "$3" >"$2.source"
  mv -T "$1/rootfs" "$2"
fi
rm -rf --one-file-system "$1"
"""


def steps(c: Context) -> list[Step]:
    r = c.recipe.rootfs
    if r.debootstrap:
        image = debootstrap_image(c)
    elif r.tarball:
        image = tarball_image(c)
    elif r.directory:
        image = []  # used in place, read-only: nothing to build, nothing ever written there
    else:
        image = busybox_image(c)
    builds = [s for s in image + dev_template(c) if s.argv[:2] == ("mkdir", "-m") and s.undo]
    # A build that lost the race (another apply published first) has its remaining steps skipped,
    # its publish too: its work dir goes here, after the builds, whatever happened.
    sweep = Step(
        "rootfs",
        ("rm", "-rf", "--one-file-system", *(s.argv[3] for s in builds)),
        "Remove this apply's build work dirs, left behind if another apply published the same image first.",
    )
    return use_steps(c) + image + dev_template(c) + [sweep]


# $1 the record, $2 the image (or shifted copy) used, $3 the state dir, $4 the container: what
# `ctrsh rmi` reads (images.users) to tell whether the container still exists.
WRITE_USE = 'umask 077; printf "%s\\n" "$2" "$3" "$4" >"$1"'


def use_steps(c: Context) -> list[Step]:
    """Record that this container uses its image *before* looking whether the image exists, under
    a shared lock on it: `rmi` (exclusive) either sees the record or has removed the image first."""
    if c.recipe.rootfs.directory:
        return []  # the recipe's own dir: nothing rmi would remove
    image = image_dir(c)
    record = images.use_record(c.paths, image)
    return [
        Step(
            "rootfs",
            ("install", "-d", "-m", "0700", os.path.dirname(image)),
            "Where built images are kept; 0700 (set even if it exists): an image may hold setuid files "
            "and device nodes, which no other host user may reach (Docker's CVE-2021-41091).",
        ),
        Step(
            "rootfs",
            ("flock", "--shared", f"{image}.lock", "sh", "-c", WRITE_USE, "ctrsh-use", record, lower_dir(c),
             c.facts.state_dir, c.recipe.name),
            "Record that this container uses the image, before looking whether it exists, under the image's "
            "lock (shared): `ctrsh rmi` (exclusive) then either sees it and refuses, or has removed the image "
            "already and it is built again. Removed when the container is torn down.",
            undo=("rm", "-f", record),
        ),
    ]  # fmt: skip


def image_dir(c: Context) -> str:
    """The cached image, or the recipe's directory."""
    lower = images.lower_dir(c.recipe, c.facts, c.paths)
    assert lower is not None
    return lower


def lower_dir(c: Context) -> str:
    """The overlay's read-only lower layer: the image, or with a user namespace its shifted copy."""
    if c.userns:
        return images.shifted_dir(c.paths, image_dir(c), *c.idmaps)
    return image_dir(c)


# Copy the image ($1) into this build's dir ($2, the cwd of the extracting tar) through the container's
# user namespace ($3): the reading tar runs as the host's root, the writing one as root *inside*, so
# every owner it sets is shifted by the maps (0 -> 100000) and an id the maps lack is an error.
# Device nodes are left out (mknod is refused in a user namespace; ctrsh mounts its own /dev),
# sockets are skipped by tar; setuid bits, hardlinks, xattrs (file capabilities become the namespace's
# own) and ACLs are kept. No pipefail in sh: a failed reading side leaves a mark, checked at the end.
SHIFT_COPY = """set -e
cd "$2"
{ (cd "$1" && find . -xdev ! -type b ! -type c -print0 |
    tar --create --file=- --null --no-recursion --files-from=- --numeric-owner --sparse --xattrs --acls) ||
    echo failed >../create-failed; } |
  nsenter --user="$3" -- tar --extract --file=- --numeric-owner --same-owner --same-permissions \\
    --xattrs --xattrs-include='*' --acls
[ ! -e ../create-failed ]
"""


def shift_steps(c: Context) -> list[Step]:
    """`user`: a copy of the image with its owners shifted by the maps, cached by (image, maps) and
    built like an image (work dir, rename under a lock), after the user namespace exists."""
    if not c.userns:
        return []
    shifted = lower_dir(c)
    b = Build(c, "", image=shifted, phase="filesystem")
    uid, gid = c.root_ids()
    uids, gids = c.idmaps
    source = images.source_text(c.recipe.rootfs, c.facts)
    return [
        *b.start("a copy of the image shifted for the user namespace")[1:],
        b.step(
            ("chown", f"{uid}:{gid}", b.rootfs),
            f"The copy's root belongs to root inside (host {uid}:{gid}), so the tar inside may write there.",
        ),
        b.step(
            ("sh", "-c", SHIFT_COPY, "ctrsh-shift", image_dir(c), b.rootfs, c.paths.nsfile("user")),
            "Copy the image, extracting as root of the user namespace: owners land shifted (0 -> host "
            f"{uid}). Device nodes are skipped (/dev is ctrsh's own). Made once per image and maps.",
            progress=True,
        ),
        *b.publish(f"{source} shifted uid {'; '.join(uids)} gid {'; '.join(gids)}"),
        Step(
            "filesystem",
            ("rm", "-rf", "--one-file-system", b.work),
            "Remove this apply's work dir for the copy, left behind if another apply published it first.",
        ),
    ]


def record_image(c: Context) -> list[Step]:
    """Note in the container's state which image it uses, so `ctrsh rmi` refuses to remove it."""
    return [
        Step(
            "filesystem",
            ("sh", "-c", 'printf "%s\\n" "$2" >"$1"', "ctrsh-record", f"{c.paths.state}/image", lower_dir(c)),
            "Record which image this container is made from: `ctrsh rmi` refuses to remove an image in use.",
        )
    ]


class Build:
    """The steps that build one cached image in a work dir of this container's own, then publish it."""

    def __init__(self, c: Context, name: str, image: str | None = None, phase: Phase = "rootfs") -> None:
        self.c = c
        self.phase = phase
        self.image = image or c.paths.image(name)
        self.work = f"{self.image}.tmp-{c.recipe.name}"  # unique: one container of a name at a time
        self.rootfs = f"{self.work}/rootfs"

    def step(self, argv: Argv, why: str, undo: Argv | None = None, progress: bool = False) -> Step:
        return Step(self.phase, argv, why, undo=undo, creates=self.image, keep=True, progress=progress)

    def start(self, what: str) -> list[Step]:
        return [
            self.step(
                ("install", "-d", "-m", "0700", os.path.dirname(self.image)),
                "Where built images are kept; 0700 (set even if it exists): an image may hold setuid files "
                "and device nodes, which no other host user may reach (Docker's CVE-2021-41091).",
            ),
            self.step(
                ("rm", "-rf", "--one-file-system", self.work),
                "Clear what an earlier, interrupted build by this container name may have left.",
            ),
            self.step(
                ("mkdir", "-m", "0755", self.work, self.rootfs),
                f"Build {what} in a work dir of this container's own, beside its final place; "
                "a build cut short is never used.",
                undo=("rm", "-rf", "--one-file-system", self.work),
            ),
        ]

    def publish(self, source: str) -> list[Step]:
        return [
            self.step(
                ("flock", f"{self.image}.lock", "sh", "-c", PUBLISH, "ctrsh-publish", self.work, self.image, source),
                "Publish the finished build in one rename, under its lock: if another apply published "
                "it first, keep theirs and drop this copy. Later applies reuse it.",
            )
        ]


def busybox_image(c: Context) -> list[Step]:
    b = Build(c, "busybox")
    tmp = b.rootfs
    return [
        *b.start("a busybox image"),
        b.step(
            ("mkdir", "-m", "0755", *(f"{tmp}/{d}" for d in LAYOUT)),
            "The usual top-level dirs, mode 0755 whatever the umask ctrsh runs with.",
        ),
        b.step(("chmod", "1777", f"{tmp}/tmp"), "/tmp is writable by all, with the sticky bit, as on any Linux."),
        b.step(
            ("install", "-m", "0755", c.facts.busybox, f"{tmp}/bin/busybox"),
            "A static busybox needs no libraries: this one file is every command in the image.",
        ),
        b.step(
            ("sh", "-c", LINK_APPLETS, "ctrsh-link", tmp),
            "One relative symlink per applet (usr/bin/env -> ../../bin/busybox), valid wherever the tree is mounted.",
        ),
        b.step(("sh", "-c", WRITE_ETC, "ctrsh-etc", tmp), "Minimal /etc/passwd and /etc/group, so tools show names."),
        *b.publish("busybox"),
    ]


# debootstrap under umask 022 (its own files' modes, not the caller's umask),
# in a mount namespace of its own: the /proc and /sys it mounts in the target
# vanish with it, even if it is killed half-way.
DEBOOTSTRAP = 'umask 022; exec debootstrap "$@"'


def debootstrap_image(c: Context) -> list[Step]:
    d = c.recipe.rootfs.debootstrap
    assert d is not None
    name = images.image_name(c.recipe.rootfs, c.facts)
    assert name is not None
    b = Build(c, name)
    mirror = d.mirror or c.facts.apt_mirror
    opts = [] if d.variant == "-" else [f"--variant={d.variant}"]
    if d.include:
        opts.append(f"--include={','.join(sorted(set(d.include)))}")
    return [
        *b.start(f"Debian {d.suite}"),
        b.step(
            ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", DEBOOTSTRAP, "ctrsh-debootstrap",
             *opts, d.suite, b.rootfs, mirror),
            f"Download and unpack Debian {d.suite} ({d.variant}) from {mirror}; debootstrap prints each stage. "
            "Built once: later applies reuse the image.",
            progress=True,
        ),
        b.step(
            ("find", f"{b.rootfs}/var/cache/apt/archives", "-xdev", "-name", "*.deb", "-type", "f", "-delete"),
            "Drop the downloaded .deb files: installed, they only take space in every copy of the image.",
        ),
        *b.publish(images.source_text(c.recipe.rootfs, c.facts)),
    ]  # fmt: skip


def tar_flag(path: str) -> str:
    if path.endswith((".tar.gz", ".tgz")):
        return "--gzip"
    if path.endswith((".tar.xz", ".txz")):
        return "--xz"
    if path.endswith((".tar.zst", ".tzst")):
        return "--zstd"
    return "--no-auto-compress"


def tarball_image(c: Context) -> list[Step]:
    t = c.recipe.rootfs.tarball
    assert t is not None
    path = c.facts.files.host_path(t.path)
    fact = c.facts.files.tarballs.get(path)
    digest = fact.sha256 if fact and fact.sha256 else "0" * 64
    name = images.image_name(c.recipe.rootfs, c.facts)
    assert name is not None
    b = Build(c, name)
    archive = f"{b.work}/archive"
    return [
        *b.start(f"the image of {path}"),
        b.step(("cp", path, archive), "A private copy of the archive: what is checked is what is unpacked."),
        b.step(
            ("sh", "-c", 'printf "%s  %s\\n" "$1" "$2" | sha256sum --check --quiet --strict -', "ctrsh-verify",
             digest, archive),
            "The copy must be the file whose every entry was checked before compiling (same sha256), "
            "not one swapped in since.",
        ),
        b.step(
            ("tar", "--extract", tar_flag(path), "--numeric-owner", "--same-owner", "--same-permissions",
             "--file", archive, "--directory", b.rootfs),
            "Unpack with the archive's own owners (numeric, not mapped through the host's names) and modes.",
        ),
        *b.publish(images.source_text(c.recipe.rootfs, c.facts)),
    ]  # fmt: skip


def dev_template(c: Context) -> list[Step]:
    """The contents of every container's /dev, made once with mknod and ln, copied in at each start.

    Copying a template (`cp -a`) is one command per container instead of a
    dozen; the nodes themselves are made here, where a learner can see them.
    Built and published like an image (own work dir, rename under a lock).
    """
    b = Build(c, "dev", image=c.paths.dev_template)
    tmp = b.rootfs
    out = [
        *b.start("a template for /dev"),
        b.step(
            ("mkdir", "-m", "0755", f"{tmp}/pts", f"{tmp}/shm", f"{tmp}/mqueue"),
            "Mount points for ptys, shared memory and message queues; the template's own mode 0755 becomes /dev's.",
        ),
    ]
    for name, major, minor in DEVICES:
        out.append(
            b.step(
                ("mknod", "-m", "666", f"{tmp}/{name}", "c", str(major), str(minor)),
                f"/dev/{name}: character device {major}:{minor}, one of the six devices every container gets.",
            )
        )
    for target, name in DEV_LINKS:
        out.append(b.step(("ln", "-s", target, f"{tmp}/{name}"), f"/dev/{name} -> {target}, as on any Linux."))
    return out + b.publish("dev template")
