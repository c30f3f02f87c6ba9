"""The host's own ids: who has which uid and gid, and who may become which (subordinate ranges).

Read once (facts.detect) from /etc/passwd, /etc/group, /etc/subuid and /etc/subgid; compile gets
them as data. A user namespace's map must put the container on host ids that are no one's: a host
user with one of them could signal and trace the container's processes and would own its files,
and a user who owns a subordinate range can become any id in it (newuidmap, newgidmap).
"""

from __future__ import annotations

from dataclasses import dataclass

RESERVED = "ctrsh"  # the user whose subordinate ranges the default map takes (Docker's is dockremap)
FIRST, COUNT = 100000, 65536  # the default map: 65536 ids, from 100000 up in steps of 65536 (useradd's slots)
MAX_ID = 2**32 - 1

Account = tuple[str, int]  # (name, id)
SubRange = tuple[str, int, int]  # (owner, first, count)


@dataclass(frozen=True)
class HostIds:
    users: tuple[Account, ...] = ()  # /etc/passwd
    groups: tuple[Account, ...] = ()  # /etc/group
    subuids: tuple[SubRange, ...] = ()  # /etc/subuid
    subgids: tuple[SubRange, ...] = ()  # /etc/subgid


def parse_accounts(text: str) -> tuple[Account, ...]:
    """name:x:ID:... lines (passwd(5), group(5)); comments, NIS '+' lines and junk are left out."""
    out = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] and not fields[0].startswith(("#", "+", "-")) and fields[2].isdigit():
            out.append((fields[0], int(fields[2])))
    return tuple(out)


def parse_subids(text: str) -> tuple[SubRange, ...]:
    """owner:first:count lines (subuid(5)); the owner may be a name or a uid."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        numbers = len(fields) == 3 and all(f.isdigit() for f in fields[1:])
        if numbers and fields[0] and not fields[0].startswith("#") and int(fields[2]) > 0:
            out.append((fields[0], int(fields[1]), int(fields[2])))
    return tuple(out)


def read(etc: str = "/etc") -> HostIds:
    def text(name: str) -> str:
        try:
            with open(f"{etc}/{name}", encoding="utf-8", errors="replace") as f:
                return f.read(1 << 22)
        except OSError:
            return ""

    return HostIds(
        users=parse_accounts(text("passwd")),
        groups=parse_accounts(text("group")),
        subuids=parse_subids(text("subuid")),
        subgids=parse_subids(text("subgid")),
    )


# --- the maps against them -------------------------------------------------------------------------

KINDS = {
    "uid": ("user", "/etc/passwd", "/etc/subuid", "newuidmap"),
    "gid": ("group", "/etc/group", "/etc/subgid", "newgidmap"),
}


def line_problems(label: str, line: str, kind: str, ids: HostIds) -> list[str]:
    """Why one map line's host ids are someone else's, one message per reason ([] if none)."""
    inside, outside, count = (int(x) for x in line.split())
    del inside
    accounts, subs = (ids.users, ids.subuids) if kind == "uid" else (ids.groups, ids.subgids)
    what, accounts_file, subs_file, tool = KINDS[kind]
    out = []
    hits = sorted({(i, n) for n, i in accounts if outside <= i < outside + count})
    if hits:
        (first, name), more = hits[0], len(hits) - 1
        also = f" (and {more} more in {accounts_file})" if more else ""
        harm = (
            "that user could signal the container's processes and would own its files"
            if kind == "uid"
            else "its members would share the group of the container's processes and files"
        )
        out.append(
            f"{label}: {line!r} maps onto host {kind} {first}, the {what} {name!r} in {accounts_file}{also}: "
            f"{harm}; map onto ids no one has"
        )
    for owner, first, n in subs:
        if owner != RESERVED and first < outside + count and outside < first + n:
            out.append(
                f"{label}: {line!r} overlaps the subordinate {kind}s {first}-{first + n - 1} of {owner!r} in "
                f"{subs_file}: that user can become them ({tool}) and so signal the container's processes"
            )
    return out


def _taken(ids: HostIds) -> list[tuple[int, int]]:
    """[first, end) ranges of host ids someone has or can become, uids and gids alike."""
    out = [(i, i + 1) for _, i in (*ids.users, *ids.groups)]
    out += [(first, first + n) for _, first, n in (*ids.subuids, *ids.subgids)]
    return out


def free_range(ids: HostIds) -> tuple[int, list[str]]:
    """The first 65536 ids from 100000 up, in steps of 65536, that no one has or can become, as uids
    and as gids (so a container's uid and gid are the same number); and what was skipped, why."""
    taken = _taken(ids)
    skipped: list[str] = []
    start = FIRST
    while start + COUNT <= MAX_ID:
        clash = [(a, b) for a, b in taken if a < start + COUNT and start < b]
        if not clash:
            return start, skipped
        skipped.append(f"{start}-{start + COUNT - 1}")
        start += COUNT
    raise AssertionError("no free range of host ids")  # 65000 ranges, each taken: not a real host


@dataclass(frozen=True)
class DefaultMaps:
    uids: tuple[str, ...]
    gids: tuple[str, ...]
    note: str
    problems: tuple[str, ...] = ()  # ctrsh's own ranges are unusable (too small, someone else's)


def default_maps(ids: HostIds) -> DefaultMaps:
    """The maps for `user` without uid_map/gid_map: ctrsh's subordinate ranges if it has both, else
    the first free range (computed from the host's files: the same on every plan of this host, so
    the shifted copy of an image is reused)."""
    u = next((r for r in ids.subuids if r[0] == RESERVED), None)
    g = next((r for r in ids.subgids if r[0] == RESERVED), None)
    same = " Every user-namespace container with the default map runs on these same host ids."
    if u and g:
        problems = [
            f"the default map: the range {first}:{n} of {RESERVED!r} in {file} has fewer than {COUNT} ids; "
            f"give it {COUNT} (e.g. '{RESERVED}:{first}:{COUNT}')"
            for (_, first, n), file in ((u, "/etc/subuid"), (g, "/etc/subgid"))
            if n < COUNT
        ]
        uids, gids = (f"0 {u[1]} {COUNT}",), (f"0 {g[1]} {COUNT}",)
        if not problems:
            label = f"the default map (from {RESERVED!r}'s ranges)"
            problems = [*line_problems(label, uids[0], "uid", ids), *line_problems(label, gids[0], "gid", ids)]
        note = (
            f"user namespace: the default map takes host uids {u[1]}-{u[1] + COUNT - 1} and gids "
            f"{g[1]}-{g[1] + COUNT - 1}: the subordinate ranges /etc/subuid and /etc/subgid give the user "
            f"{RESERVED!r} (as Docker's userns-remap takes dockremap's), which no other user has or can become." + same
        )
        return DefaultMaps(uids, gids, note, tuple(problems))
    start, skipped = free_range(ids)
    line = f"0 {start} {COUNT}"
    why = f" ({', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''} taken)" if skipped else ""
    note = (
        f"user namespace: the default map takes host ids {start}-{start + COUNT - 1} (uids and gids): the first "
        f"{COUNT} from {FIRST} up, in steps of {COUNT}, that no user in /etc/passwd or group in /etc/group has "
        f"and no range in /etc/subuid or /etc/subgid overlaps{why}. It is not reserved: `useradd` may give it "
        f"to the next user it makes. Adding '{RESERVED}:{start}:{COUNT}' to /etc/subuid and /etc/subgid "
        "reserves it (ctrsh then takes that range)." + same
    )
    return DefaultMaps((line,), (line,), note)
