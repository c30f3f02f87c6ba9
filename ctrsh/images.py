"""The image cache in DATA/images: names keyed by what built them, listing and removal.

An image is a directory DATA/images/NAME, published by one rename when its
build is complete, with a sidecar NAME.source (what it was built from). A
build in progress lives in NAME.tmp-CONTAINER; NAME.lock serialises the
publish and removal (flock).

An apply records that it uses an image (NAME.use-STATE-CONTAINER, in the data dir,
which instances with different state dirs share) under a shared flock on NAME.lock,
before it looks whether the image exists; `rmi` checks the records under the
exclusive lock. So either rmi sees the record and refuses, or it has removed the
image before the apply looks, and the apply builds it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

from .errors import CtrshError, UsageError
from .facts import Facts, Paths
from .recipe import Recipe, Rootfs


def image_name(rootfs: Rootfs, facts: Facts) -> str | None:
    """The cache name of the image this source builds; None for a directory (used in place)."""
    if rootfs.debootstrap:
        d = rootfs.debootstrap
        key = json.dumps([d.suite, d.variant, sorted(set(d.include)), d.mirror or facts.apt_mirror])
        variant = "default" if d.variant == "-" else d.variant
        return f"{d.suite}-{variant}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if rootfs.tarball:
        fact = facts.files.tarballs.get(facts.files.host_path(rootfs.tarball.path))
        digest = fact.sha256 if fact and fact.sha256 else "0" * 64  # unread: compile reports it
        return f"tarball-{digest[:16]}"
    if rootfs.directory:
        return None
    return "busybox"


def source_text(rootfs: Rootfs, facts: Facts) -> str:
    """What `ctrsh images` shows as the source."""
    if rootfs.debootstrap:
        d = rootfs.debootstrap
        inc = f" +{','.join(sorted(set(d.include)))}" if d.include else ""
        return f"debootstrap {d.suite} {d.variant}{inc} {d.mirror or facts.apt_mirror}"
    if rootfs.tarball:
        path = facts.files.host_path(rootfs.tarball.path)
        fact = facts.files.tarballs.get(path)
        return f"tarball {path} sha256:{fact.sha256 if fact else '?'}"
    return "busybox"


def lower_dir(recipe: Recipe, facts: Facts, paths: Paths) -> str | None:
    if recipe.rootfs.directory:
        return facts.files.host_path(recipe.rootfs.directory.path)
    name = image_name(recipe.rootfs, facts)
    return paths.image(name) if name else None


SHIFT = ".shift-"  # NAME.shift-HASH: a copy of image NAME with its owners shifted for a user namespace


def shift_key(uid_map: tuple[str, ...], gid_map: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps([list(uid_map), list(gid_map)]).encode()).hexdigest()[:12]


def shifted_dir(paths: Paths, image_dir: str, uid_map: tuple[str, ...], gid_map: tuple[str, ...]) -> str:
    """The cached copy of an image whose owners are shifted by these maps: keyed by (image, maps)."""
    return f"{image_dir}{SHIFT}{shift_key(uid_map, gid_map)}"


def shifted_copies(image_dir: str) -> list[str]:
    """Published shifted copies of an image (not builds in progress, nor ones being removed)."""
    base, name = os.path.split(image_dir)
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for entry in entries:
        rest = entry[len(name) :]
        path = f"{base}/{entry}"
        published = os.path.isdir(path) and not os.path.islink(path)
        if entry.startswith(name + SHIFT) and re.fullmatch(r"\.shift-[0-9a-f]{12}", rest) and published:
            out.append(path)
    return out


USE = ".use-"  # NAME.use-STATEHASH-CONTAINER: that container (of that state dir) uses image NAME


def state_key(state_dir: str) -> str:
    return hashlib.sha256(state_dir.encode()).hexdigest()[:8]


def use_record(paths: Paths, image_dir: str) -> str:
    """The file that says this container uses the image (or a shifted copy of it)."""
    return f"{image_dir}{USE}{state_key(paths.facts.state_dir)}-{paths.name}"


def _record_users(facts: Facts, image_dir: str) -> list[str]:
    """Containers of any state dir whose use record names the image (or a copy of it) and that
    still exist: their name's lock is held (an apply runs, or the container does) or their state dir
    is there (until `destroy`). A record of neither is stale (its apply was killed early)."""
    from .lock import is_held, lock_path

    base, name = os.path.split(image_dir)
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.startswith(name.split(SHIFT)[0] + USE):
            continue
        try:
            with open(f"{base}/{entry}") as f:
                used, state, container = [*f.read().splitlines(), "", "", ""][:3]
        except OSError:
            continue
        if used != image_dir and not (used.startswith(image_dir + SHIFT) and SHIFT not in image_dir):
            continue
        if not state or not container:
            continue
        if is_held(lock_path(state, container)) or os.path.isdir(f"{state}/{container}"):
            found.append(container if state == facts.state_dir else f"{container} (state dir {state})")
    return found


@dataclass(frozen=True)
class Image:
    name: str
    source: str
    size: int  # bytes
    created: float  # epoch seconds
    used_by: tuple[str, ...]
    shifted: int = 0  # how many copies shifted for a user namespace it has (counted in size)


def users(facts: Facts, image_dir: str) -> list[str]:
    """Containers whose root is made from the image: each records it in DATA/images (use_record),
    and in STATE/NAME/image (this state dir's only)."""
    found = _record_users(facts, image_dir)
    try:
        names = sorted(os.listdir(facts.state_dir))
    except OSError:
        return found
    for name in names:
        try:
            with open(f"{facts.state_dir}/{name}/image") as f:
                used = f.read().strip()
            if (used == image_dir or (used.startswith(image_dir + SHIFT) and SHIFT not in image_dir)) and (
                name not in found
            ):
                found.append(name)
        except OSError:
            continue
    return found


def du(path: str) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for f in (*files, *dirs):
            try:
                st = os.lstat(os.path.join(top, f))
            except OSError:
                continue
            if st.st_nlink < 2 or not os.path.isfile(os.path.join(top, f)):
                total += st.st_size
            else:
                total += st.st_size // st.st_nlink  # shared by hardlinks: count each once overall
    return total


def listing(facts: Facts) -> list[Image]:
    base = f"{facts.data_dir}/images"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for name in entries:
        path = f"{base}/{name}"
        if name.startswith(".") or ".tmp-" in name or ".rm-" in name or not os.path.isdir(path):
            continue
        if re.fullmatch(r".+\.shift-[0-9a-f]{12}", name):  # a shifted copy: counted under its image
            continue
        if os.path.islink(path):
            continue
        try:
            with open(f"{path}.source") as f:
                source = f.read().strip()
            created = os.stat(f"{path}.source").st_mtime
        except OSError:
            source, created = ("busybox" if name == "busybox" else "?"), os.stat(path).st_mtime
        copies = shifted_copies(path)
        size = du(path) + sum(du(copy) for copy in copies)
        out.append(Image(name, source, size, created, tuple(users(facts, path)), len(copies)))
    return out


def remove(facts: Facts, name: str) -> str:
    """Remove one cached image, unless a container uses it; return its path. Under its lock."""
    if not name or "/" in name or name.startswith(".") or ".tmp-" in name:
        raise UsageError(f"{name!r} is not an image name (see `ctrsh images`)")
    path = f"{facts.data_dir}/images/{name}"
    if not os.path.isdir(path) or os.path.islink(path):
        raise UsageError(f"no image {name!r} in {facts.data_dir}/images (see `ctrsh images`)")
    with open(f"{path}.lock", "a") as lock:
        # Without waiting: an apply holds it shared only while it records its use, a build exclusive
        # while it publishes; a few tries 10 ms apart, then "busy" (an apply stopped there must not hang rmi).
        for i in range(20):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if i == 19:
                    raise CtrshError(
                        f"image {name!r} is in use: an apply is recording its use or publishing it"
                    ) from None
                time.sleep(0.01)
        using = users(facts, path)
        if using:
            raise CtrshError(f"image {name!r} is in use by: {', '.join(using)}; stop or destroy them first")
        # A stale record (its apply was killed before the container existed) is left alone: an exported
        # script holds no name lock, and until it makes its state dir its live record looks the same.
        # Renamed first, so no apply can pick up a half-deleted image; then removed, never across mounts.
        import subprocess

        # Its shifted copies first (each under its own lock: a build may be publishing one), then it.
        for copy in shifted_copies(path):
            with open(f"{copy}.lock", "a") as copy_lock:
                fcntl.flock(copy_lock, fcntl.LOCK_EX)
                doomed = f"{copy}.rm-{os.getpid()}-{int(time.time())}"
                os.rename(copy, doomed)
                subprocess.run(["rm", "-rf", "--one-file-system", doomed], check=True)
                for extra in (f"{copy}.source",):
                    if os.path.exists(extra):
                        os.unlink(extra)
        doomed = f"{path}.rm-{os.getpid()}-{int(time.time())}"
        os.rename(path, doomed)
        subprocess.run(["rm", "-rf", "--one-file-system", doomed], check=True)
        for extra in (f"{path}.source",):
            if os.path.exists(extra):
                os.unlink(extra)
    return path
