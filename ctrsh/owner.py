"""Ownership marks: `destroy` removes only what ctrsh made.

A directory at DATA/containers/NAME or STATE/NAME may be a look-alike (made
by hand, by another tool, by another ctrsh instance with other dirs): ctrsh
writes a mark file into each container dir it makes, right after making it,
and `destroy` checks it — and that the dir and the mark are root's and not
writable by anyone else — before it removes, unmounts or kills anything.

The mark names the container and both of this instance's dirs, so a copy of
another instance's container does not pass. It needs no secret: only root
can make a root-owned, 0700 directory with a root-owned file inside, and root
is trusted anyway. The journal is trusted only from a dir chain no one but
root can write (`trusted_dir`), and each of its entries must be an undo ctrsh
makes for this container (`known_undo`).
"""

from __future__ import annotations

import os
import re
import stat

from .facts import Paths
from .plan import Argv, Phase, Step, join

MARK = ".ctrsh-owner"
MAX_MARK = 4096


def content(paths: Paths) -> str:
    f = paths.facts
    return f"ctrsh container {paths.name} state-dir {f.state_dir} data-dir {f.data_dir}"


# Writes the mark without following a planted link (-C: O_EXCL). $1 = file, $2 = text.
WRITE = 'printf "%s\\n" "$2" >"$1"'


def mark_step(phase: Phase, directory: str, paths: Paths) -> Step:
    return Step(
        phase,
        ("sh", "-Cc", WRITE, "ctrsh-mark", f"{directory}/{MARK}", content(paths)),
        f"Mark the dir as this ctrsh's ({MARK}): `ctrsh destroy` removes only marked dirs, never a look-alike.",
    )


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def not_ours(directory: str, paths: Paths) -> str | None:
    """None if ctrsh made this directory for this container; else why not."""
    try:
        st = os.lstat(directory)
    except OSError as e:
        return e.strerror
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if not _private(st):
        return "not owned by root, or writable by others"
    try:
        fd = os.open(f"{directory}/{MARK}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        if _bare(directory, paths):
            return None
        return f"no ctrsh ownership mark ({MARK})"
    try:
        mst = os.fstat(fd)
        if not stat.S_ISREG(mst.st_mode) or not _private(mst):
            return f"its {MARK} is not a private regular file of root's"
        text = os.read(fd, MAX_MARK).decode(errors="replace")
    finally:
        os.close(fd)
    if text != content(paths) + "\n":
        return f"its {MARK} is another container's or another ctrsh instance's"
    return None


# What a container dir holds between its mkdir and its mark (ctrsh killed in between): empty dirs
# the mkdir made, and the journal written once the mkdir was done.
BARE = {"state": ({"ns", "rootfs"}, {"journal", "journal.tmp"}), "layer": ({"work"}, set())}


def _bare(directory: str, paths: Paths) -> bool:
    """An unmarked dir is still ctrsh's if it is exactly what its mkdir makes (the mark is the next
    step): only the empty subdirs of that mkdir and the journal, all root's. Removing it removes no
    one's data."""
    kind = "state" if directory == paths.state else "layer" if directory == paths.layer else None
    if kind is None:
        return False
    dirs, files = BARE[kind]
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    for n in names:
        try:
            st = os.lstat(f"{directory}/{n}")
        except OSError:
            return False
        if n in dirs and stat.S_ISDIR(st.st_mode) and _private(st):
            try:
                if os.listdir(f"{directory}/{n}"):
                    return False
            except OSError:
                return False
        elif not (n in files and stat.S_ISREG(st.st_mode) and _private(st)):
            return False
    return True


def trusted_dir(path: str) -> str | None:
    """None if no one but root can change `path` or any dir above it; else the first dir at fault.

    A world-writable dir with the sticky bit (/tmp) is fine: no one else can
    rename or remove root's entries in it.
    """
    real = os.path.realpath(path)
    parts = real.split("/")
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i]) or "/"
        try:
            st = os.lstat(d)
        except OSError as e:
            return f"{d}: {e.strerror}"
        if st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            return f"{d} is not root's, or others can write to it"
    return None


def known_undo(undo: Argv, paths: Paths) -> bool:
    """Is this an undo ctrsh's phases make for this container (or its image builds)?

    A journal entry is run as root by `destroy`: anything else is refused.
    Phases that add undos of new shapes add them here.
    """
    f = paths.facts
    rm = ("rm", "-rf", "--one-file-system")
    exact = {
        ("rmdir", "--ignore-fail-on-non-empty", f.state_dir),
        (*rm, paths.state),
        ("umount", "--recursive", paths.ns),
        ("ip", "netns", "delete", paths.netns),
        (*rm, paths.layer),
    }
    from .phases import cgroups

    exact.add(cgroups.kill_undo(f, paths.name))
    exact.add(("sh", "-c", cgroups.RMDIR_UNUSED, "ctrsh-rmdir", *cgroups.parents(f)))
    if undo in exact:
        return True
    if _network_undo(undo, paths):
        return True
    # This container's record that it uses an image (rootfs.use_steps): IMAGE.use-STATEHASH-NAME.
    if len(undo) == 3 and undo[:2] == ("rm", "-f"):
        from .images import USE, state_key

        parent, _, base = undo[2].rpartition("/")
        suffix = f"{USE}{state_key(f.state_dir)}-{paths.name}"
        stem = base[: -len(suffix)] if base.endswith(suffix) else ""
        return parent == f"{f.data_dir}/images" and bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stem))
    # A build's work dir: IMAGE.tmp or IMAGE.tmp-NAME, in the images dir or (the /dev template) the data dir.
    if len(undo) == 4 and undo[:3] == rm:
        parent, _, base = undo[3].rpartition("/")
        work = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.tmp(-(?P<name>[a-z0-9-]+))?", base)
        if work and work.group("name") in (None, paths.name):
            return parent in (f.data_dir, f"{f.data_dir}/images")
    return False


def _read_journal(path: str) -> tuple[list[Argv] | None, str | None]:
    """The journal's undos, or why it is not trusted."""
    import json  # only destroy reads journals: ~2 ms of import that apply and plan never need

    if why := trusted_dir(os.path.dirname(path)):
        return None, f"not trusting {path}: {why}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _private(st):
            return None, f"not trusting {path}: not a regular file of root's that only root can write"
        data = os.read(fd, 1024 * 1024)
    finally:
        os.close(fd)
    try:
        undos = json.loads(data)["undo"]
        if not isinstance(undos, list) or not all(
            isinstance(u, list) and u and all(isinstance(a, str) for a in u) for u in undos
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return None, f"not trusting {path}: not a journal ctrsh wrote"
    return [tuple(u) for u in undos], None


def unsure(paths: Paths) -> list[Argv]:
    """The journal's undos whose step may not have run (journaled before it, ctrsh killed during
    it): their failure in `destroy` is no error. Only from a journal leftovers() trusts."""
    import json

    if trusted_dir(os.path.dirname(paths.journal)) or not_ours(paths.state, paths):
        return []
    try:
        with open(paths.journal, "rb") as f:
            data = json.loads(f.read(1024 * 1024))
        items = data.get("unsure", [])
        return [tuple(u) for u in items if isinstance(u, list) and all(isinstance(a, str) for a in u)]
    except (OSError, ValueError, AttributeError):
        return []


def leftovers(paths: Paths) -> tuple[list[Argv], list[str]]:
    """What `destroy` may undo for this container, oldest first, and what it leaves alone (and why).

    Only dirs that carry this instance's mark are touched; the journal is read
    only from a marked state dir with a trusted dir chain, and only its
    entries of known shape are kept. Without a journal (ctrsh died before
    writing one), the undos of whatever marked pieces are still there.
    """
    refused: list[str] = []

    def ours(directory: str) -> bool:
        # Marked, and in a dir chain no one else can change between this check and the undo.
        if not os.path.lexists(directory):
            return False
        why = not_ours(directory, paths) or trusted_dir(os.path.dirname(directory))
        if why:
            refused.append(f"left {directory} alone: {why}")
        return not why

    state_ok, layer_ok = ours(paths.state), ours(paths.layer)
    builds = build_dirs(paths)  # made before the state dir, so before any journal
    from .phases import cgroups

    # The cgroup (named for this instance's state dir, made only by root) holds every process of the
    # container, also ones that left its namespaces: kill it even if ctrsh died between making it and
    # journaling its undo (the undo is idempotent).
    kill = cgroups.kill_undo(paths.facts, paths.name)
    cgroup_left = any(os.path.isdir(d) for d in cgroups.cgroup_dirs(paths.facts, paths.name))
    found: list[Argv] = []
    if state_ok and os.path.lexists(paths.journal):
        undos, why = _read_journal(paths.journal)
        if why:
            refused.append(why)
        for undo in undos or []:
            if not known_undo(undo, paths):
                refused.append(f"journal entry not run (not an undo ctrsh makes for {paths.name!r}): {join(undo)}")
            elif undo[-1] == paths.layer and not layer_ok:
                continue  # said above why it is left alone
            else:
                found.append(undo)
        if undos is not None:
            found = [b for b in builds if b not in found] + found
            if cgroup_left and kill not in found:
                found.append(kill)
            return found, refused
    # In the order apply creates them; undone in reverse.
    found += [("rm", "-f", record) for record in use_records(paths)]  # the rootfs phase's first step
    found += builds
    if state_ok:
        found.append(("rm", "-rf", "--one-file-system", paths.state))
        from .engine import mounted  # also a dir bind-mounted onto itself (the exported script's)

        if mounted(paths.ns):
            found.append(("umount", "--recursive", paths.ns))
        if os.path.exists(f"/run/netns/{paths.netns}"):
            found.append(("ip", "netns", "delete", paths.netns))
    if layer_ok:
        found.append(("rm", "-rf", "--one-file-system", paths.layer))
    if cgroup_left:
        found += [("sh", "-c", cgroups.RMDIR_UNUSED, "ctrsh-rmdir", *cgroups.parents(paths.facts)), kill]
    return found, refused


def build_dirs(paths: Paths) -> list[Argv]:
    """The work dirs of image and /dev template builds this container's apply left (killed while
    building: the rootfs phase runs before the state dir, so no journal has them): IMAGE.tmp-NAME in
    the images dir, dev-N.tmp-NAME in the data dir, root's dirs in root's dirs. The next build by this
    name would clear them anyway (its first step)."""
    f = paths.facts
    found: list[Argv] = []
    for parent in (f"{f.data_dir}/images", f.data_dir):
        try:
            names = sorted(os.listdir(parent))
        except OSError:
            continue
        if trusted_dir(parent):
            continue
        for n in names:
            undo = ("rm", "-rf", "--one-file-system", f"{parent}/{n}")
            if not n.endswith(f".tmp-{paths.name}") or not known_undo(undo, paths):
                continue
            try:
                st = os.lstat(f"{parent}/{n}")
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == 0:
                found.append(undo)
    return found


def use_records(paths: Paths) -> list[str]:
    """This container's records that it uses an image (rootfs.use_steps), in the images dir."""
    from .images import USE, state_key

    images = f"{paths.facts.data_dir}/images"
    suffix = f"{USE}{state_key(paths.facts.state_dir)}-{paths.name}"
    try:
        entries = sorted(os.listdir(images))
    except OSError:
        return []
    return [f"{images}/{e}" for e in entries if e.endswith(suffix) and known_undo(("rm", "-f", f"{images}/{e}"), paths)]


def _network_undo(undo: Argv, paths: Paths) -> bool:
    """The network phase's undos: ctrsh's own scripts (compared whole), for this container's name,
    veth and registry only; iptables rules only if tagged with exactly this container's tag."""
    from . import firewall, ipam
    from .netconfig import veth_names

    name, registry = paths.name, ipam.registry(paths.facts.state_dir) + "/"
    if undo[:4] == ("sh", "-euc", firewall.RULE_UNDO, "ctrsh-undo") and len(undo) > 6:
        spec = undo[6:]
        tags = [spec[i + 1] for i, a in enumerate(spec[:-1]) if a == "--comment"]
        return tags == [f"ctrsh:{name}"]
    if undo[:4] == ("sh", "-euc", firewall.LINK_UNDO, "ctrsh-undo"):
        return undo[4:] == (veth_names(paths)[0],)
    from . import names

    hosts = firewall.locked(paths.facts, names.HOSTS, "ctrsh-hosts", paths.facts.state_dir)
    if undo[: len(hosts)] == hosts and len(undo) == len(hosts) + 3:  # the names step's: this container leaving
        leases, gone, mark = undo[len(hosts) :]
        bridge = leases.removeprefix(registry + "leases-")
        return gone == name and mark == names.MARK and bridge != leases and "/" not in bridge and bridge != ".."
    unshare = set()  # the teardown half of each shared piece's script pair
    for value in vars(firewall).values():
        pairs = value.values() if isinstance(value, dict) else [value]
        unshare |= {p[1] for p in pairs if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], str)}
    for script, label in [(ipam.RELEASE, "ctrsh-release"), *((u, "ctrsh-unshare") for u in unshare)]:
        head = firewall.locked(paths.facts, script, label)
        if undo[: len(head)] == head and len(undo) > len(head) + 1:
            where, who = undo[len(head)], undo[len(head) + 1]
            return who == name and where.startswith(registry) and "/../" not in f"{where}/"
    return False
