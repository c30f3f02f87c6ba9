"""Host facts that depend on the recipe: the files it names on the host, read before compiling.

Compile stays pure: it gets these as data. A tarball is read here once, in one
pass that both hashes it (the cache key, re-checked on the copy that is
unpacked) and lists its entries, so the entries checked are the bytes unpacked.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import subprocess
import tarfile
import threading
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from .facts import Facts
    from .recipe import Recipe

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tzst")


@dataclass(frozen=True)
class TarballFact:
    sha256: str | None  # None: could not be read
    problem: str | None = None  # why it is refused (unreadable, an entry that would land outside)


@dataclass(frozen=True)
class HostFiles:
    base: str = "/"  # the recipe's directory: relative host paths in it are relative to this
    kinds: dict[str, str] = field(default_factory=dict)  # absolute host path -> dir, file, other, missing
    tarballs: dict[str, TarballFact] = field(default_factory=dict)  # absolute path -> fact
    target_problems: dict[str, str] = field(default_factory=dict)  # mount target -> why it escapes the image
    real: dict[str, str] = field(default_factory=dict)  # host path -> where it really is (symlinks resolved)

    def host_path(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.base, path))


def kind_of(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def gather(recipe: Recipe, facts: Facts) -> Facts:
    """`facts` plus what this recipe's host paths are; the image is looked into if it exists."""
    import dataclasses

    from . import images
    from .facts import Paths

    base = os.path.dirname(os.path.abspath(recipe.file))
    files = HostFiles(base=base)
    r = recipe.rootfs
    for local in (r.directory.path if r.directory else None, *(m.source for m in recipe.mounts if m.type == "bind")):
        if local is not None:
            files.kinds[files.host_path(local)] = kind_of(files.host_path(local))
            files.real[files.host_path(local)] = os.path.realpath(files.host_path(local))
    if r.tarball:
        path = files.host_path(r.tarball.path)
        files.kinds[path] = kind_of(path)
        files.tarballs[path] = scan_tarball(path) if files.kinds[path] == "file" else TarballFact(None)
    with_files = dataclasses.replace(facts, files=files)
    lower = images.lower_dir(recipe, with_files, Paths(with_files, recipe.name))
    if lower and os.path.isdir(lower):
        for m in recipe.mounts:
            if problem := escape_problem(lower, m.target):
                files.target_problems[m.target] = problem
    return with_files


def escape_problem(root: str, target: str) -> str | None:
    """Why mounting on `target` would leave the image at `root`, or None.

    Walks the target component by component inside the image. A component that
    is a symlink is refused when the host kernel, following it during the
    mount, would leave the image (an absolute link, or one climbing out with
    ..). The message names the in-image path it means (as securejoin would
    resolve it), so the recipe can say that instead.
    """
    parts = [p for p in target.split("/") if p]
    inside = ""  # resolved path so far, relative to root
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = posixpath.join(root, inside, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            return None  # it does not exist in the image: created as a real dir/file in the upper layer
        if not stat.S_ISLNK(st.st_mode):
            inside = posixpath.join(inside, part)
            continue
        link = os.readlink(candidate)
        host_target = posixpath.normpath(posixpath.join(posixpath.dirname(candidate), link))
        if link.startswith("/") or not (host_target + "/").startswith(root.rstrip("/") + "/"):
            shown = "/" + posixpath.join(inside, part)
            return (
                f"{target!r} goes through the image's symlink {shown} -> {link}, which points outside the "
                f"image; mounting there would land on the host. Use the path it means inside the container"
                f" ({secure_join(root, target)!r}) or another target"
            )
        hops += 1
        if hops > 40:
            return f"{target!r}: too many levels of symlinks in the image"
        parts = [p for p in posixpath.normpath(posixpath.join(inside, link)).split("/") if p] + parts
        inside = ""
    return None


def secure_join(root: str, target: str) -> str:
    """`target` with the image's symlinks resolved inside the image, as the container sees them."""
    parts = [p for p in target.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            done = done[:-1]
            continue
        path = posixpath.join(root, *done, part)
        if os.path.islink(path) and hops < 40:
            hops += 1
            link = os.readlink(path)
            parts = [p for p in link.split("/") if p] + parts
            if link.startswith("/"):
                done = []
            continue
        done.append(part)
    return "/" + "/".join(done)


class _Hashing:
    """A file reader that hashes what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        return data


def scan_tarball(path: str) -> TarballFact:
    """Hash the archive and check every entry lands inside the image, in one read."""
    try:
        with open(path, "rb") as f:
            reader = _Hashing(f)
            problem = _scan_through(reader, tool) if (tool := decompressor(path)) else _scan(reader)
            while reader.read(1 << 20):  # hash the rest (tar's end padding)
                pass
    except OSError as e:
        return TarballFact(None, f"cannot read {path}: {e.strerror}")
    return TarballFact(reader.hash.hexdigest(), problem)


# The same program tar is told to use (rootfs.tar_flag), so the entries checked are the entries
# unpacked: Python's gzip reader, say, stops after the first gzip member, where gzip goes on.
DECOMPRESSORS = {(".tar.gz", ".tgz"): "gzip", (".tar.xz", ".txz"): "xz", (".tar.zst", ".tzst"): "zstd"}


def decompressor(path: str) -> str | None:
    return next((tool for suffixes, tool in DECOMPRESSORS.items() if path.endswith(suffixes)), None)


def _scan_through(reader: _Hashing, tool: str) -> str | None:
    proc = subprocess.Popen([tool, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin and proc.stdout

    def feed() -> None:
        assert proc.stdin
        try:
            while chunk := reader.read(1 << 20):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        problem = _scan(proc.stdout)
        while proc.stdout.read(1 << 20):
            pass
    finally:
        feeder.join()
        code = proc.wait()
    if problem is None and code != 0:
        problem = f"not a valid {tool} archive"
    return problem


def _scan(stream: IO[bytes] | _Hashing) -> str | None:
    try:
        # r| (plain tar): compression, if any, was undone by the same tool tar will use; one that is
        # not what the file's name says fails here and in tar alike.
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            return check_members(tar)
    except (tarfile.TarError, EOFError, OSError) as e:
        return f"not a readable tar archive ({e})"


def check_members(members: tarfile.TarFile) -> str | None:
    """The first entry that would land outside the image, as a message; None if all stay inside.

    Refused: absolute names, '..', an entry whose path goes through an entry
    that is a symlink (it would be written wherever the link points), hardlinks
    to absolute paths, '..' or through symlinks, and device nodes outside /dev.
    """
    links: set[str] = set()  # names that are symlinks (so far: a later entry may replace one)
    devices: set[str] = set()  # names that are device nodes: a hardlink to one is a device node too
    for m in members:
        name = m.name
        norm = posixpath.normpath(name.removeprefix("./")) if name not in (".", "./") else "."
        if name.startswith("/"):
            return f"entry {name!r} has an absolute path"
        if ".." in name.split("/"):
            return f"entry {name!r} contains '..'"
        parts = norm.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                return f"entry {name!r} goes through the symlink {'/'.join(parts[:i])!r} in the archive"
        if m.islnk():
            target = m.linkname
            if target.startswith("/") or ".." in target.split("/"):
                return f"hardlink {name!r} points outside the image ({target!r})"
            tparts = posixpath.normpath(target.removeprefix("./")).split("/")
            if any("/".join(tparts[:i]) in links for i in range(1, len(tparts) + 1)):
                return f"hardlink {name!r} points through a symlink ({target!r})"
            if "/".join(tparts) in devices and not norm.startswith("dev/"):
                return f"hardlink {name!r} to the device node {target!r} is a device node outside /dev"
        if (m.ischr() or m.isblk()) and not norm.startswith("dev/"):
            return f"entry {name!r} is a device node outside /dev"
        if m.issym():
            links.add(norm)
        else:
            links.discard(norm)
        if m.ischr() or m.isblk():
            devices.add(norm)
    return None
