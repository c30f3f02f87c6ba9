"""Volumes (the recipe's `mounts:`): host bind mounts, named volumes, tmpfs.

Each is mounted inside the container's mount namespace (`nsenter --mount`), so
the host never sees it and it goes with the namespace: no undo needed. Named
volumes live in DATA/volumes/NAME, are made on first use and kept after the
container is gone. Targets are checked before compiling (recipe rules, and
symlinks in an existing image: hostfiles.escape_problem); the mount points
themselves are made as real dirs/files in the container's upper layer from
`mountpoints()`, so an image symlink can never redirect a mount.
"""

from __future__ import annotations

from ..plan import Argv, Step
from ..recipe import Mount
from . import Context


def ordered(c: Context) -> list[Mount]:
    """Parents before children (/data before /data/cache), else in recipe order."""
    return sorted(c.recipe.mounts, key=lambda m: m.target.count("/"))


def source_dir(c: Context, m: Mount) -> str:
    assert m.source is not None
    if m.type == "volume":
        return c.paths.volume(m.source)
    return c.facts.files.host_path(m.source)


def mountpoints(c: Context) -> list[tuple[str, bool]]:
    """(path inside the container, is a directory) for every mount made here."""
    out = []
    for m in ordered(c):
        is_dir = m.type != "bind" or c.facts.files.kinds.get(source_dir(c, m)) != "file"
        out.append((m.target, is_dir))
    return out


# $1 the image (lower), $2 the upper layer, then the dirs. A parent made in the upper layer
# for a mount point (/tmp for /tmp/x) would hide the image's own mode (1777) with 0755:
# give it the image's mode and owner where the image has that dir, inside the image.
PARENT_MODES = """l=$(realpath -e -- "$1") u=$2; shift 2
for d; do
  r=$(realpath -e -- "$l$d" 2>/dev/null) || continue
  case $r in "$l"/*) [ -d "$r" ] && chmod --reference="$r" "$u$d" && chown --reference="$r" "$u$d" ;; esac
done
true"""


def parent_modes(c: Context, lower: str) -> list[Step]:
    """Steps, after the mount points are made in the upper layer and before the overlay is mounted."""
    parents: list[str] = []
    for target, _ in mountpoints(c):
        parts = target.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in parents:
                parents.append(d)
    if not parents:
        return []
    return [
        Step(
            "filesystem",
            ("sh", "-c", PARENT_MODES, "ctrsh-modes", lower, c.paths.upper, *parents),
            "Parents of the volumes' mount points keep the image's own mode and owner (/tmp stays 1777).",
        )
    ]


def steps(c: Context) -> list[Step]:
    root = c.paths.rootfs

    def inside(argv: Argv, why: str) -> Step:
        return Step("filesystem", (*c.nsenter("mount"), *argv), why)

    out: list[Step] = []
    made_volumes_dir = False
    for m in ordered(c):
        dst = f"{root}{m.target}"
        if m.type == "tmpfs":
            opts = ["nosuid", "nodev"]
            if m.size:
                opts.append(f"size={m.size}")
            if m.mode:
                opts.append(f"mode={m.mode}")
            if c.userns:
                opts += [f"uid={c.root_ids()[0]}", f"gid={c.root_ids()[1]}"]  # root inside owns it
            out.append(
                inside(
                    ("mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", dst),
                    f"{m.target}: a tmpfs of its own, in memory, gone when the container stops.",
                )
            )
            continue
        src = source_dir(c, m)
        if m.type == "volume":
            if not made_volumes_dir:
                out.append(
                    Step(
                        "filesystem",
                        ("mkdir", "-p", "-m", "0700", c.paths.volumes),
                        "Named volumes live here, root-only; kept when containers go.",
                        creates=c.paths.volumes,
                    )
                )
                made_volumes_dir = True
            uid, gid = c.root_ids()
            out.append(
                Step(
                    "filesystem",
                    ("install", "-d", "-m", "0755", "-o", str(uid), "-g", str(gid), src)
                    if c.userns
                    else ("mkdir", "-p", "-m", "0755", src),
                    f"Volume {m.source!r}: made on first use, then kept (`ctrsh volumes` lists it)"
                    + (f"; owned by root inside (host {uid}:{gid})." if c.userns else "."),
                    creates=src,
                )
            )
        what = f"volume {m.source!r}" if m.type == "volume" else src
        out.append(inside(("mount", "--bind", src, dst), f"{m.target}: {what}, bind-mounted (not its submounts)."))
        if m.readonly:
            out.append(
                inside(
                    ("mount", "-o", "remount,bind,ro", dst),
                    f"{m.target} read-only: a bind mount takes `ro` only on a remount of itself.",
                )
            )
    return out
