"""User namespace maps against the host's ids (hostids): fake facts, exact messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrsh.compile import compile_plan
from ctrsh.errors import RecipeError
from ctrsh.facts import Facts
from ctrsh.hostids import HostIds, default_maps, free_range, parse_accounts, parse_subids, read
from ctrsh.recipe import parse

HEAD = "name: x\nrootfs: {busybox: {}}\nnamespaces: [user, mount, pid]\nprocess: {args: [a]}\n"
DEBIAN = HostIds(  # a Debian host after `useradd -m alice`: alice owns the first subordinate range
    users=(("root", 0), ("nobody", 65534), ("alice", 1000)),
    groups=(("root", 0), ("disk", 6), ("nogroup", 65534), ("alice", 1000)),
    subuids=(("alice", 100000, 65536),),
    subgids=(("alice", 100000, 65536),),
)


def plan(text: str, ids: HostIds):  # type: ignore[no-untyped-def]
    return compile_plan(parse(HEAD + text, "r.yaml"), Facts(ids=ids))


def errors(text: str, ids: HostIds) -> list[str]:
    with pytest.raises(RecipeError) as e:
        plan(text, ids)
    return str(e.value).splitlines()


def maps_of(p) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    step = next(s for s in p.steps if "ctrsh-idmap" in s.argv)
    return step.argv[-2], step.argv[-1]


def test_parse_the_files() -> None:
    assert parse_accounts("root:x:0:0::/root:/bin/sh\n# c\n+nis::::\nbad\nnobody:x:65534:65534::/:/bin/false\n") == (
        ("root", 0),
        ("nobody", 65534),
    )
    assert parse_subids("alice:100000:65536\n1001:165536:65536\n#x:1:2\nbob:1:0\njunk\n") == (
        ("alice", 100000, 65536),
        ("1001", 165536, 65536),
    )


def test_read_from_a_dir(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "subuid").write_text("ctrsh:300000:65536\n")
    assert read(str(tmp_path)) == HostIds(users=(("root", 0),), subuids=(("ctrsh", 300000, 65536),))


def test_a_map_onto_host_accounts_is_refused_at_its_line() -> None:
    text = "uid_map: ['0 65534 1', '1 1000 2']\ngid_map:\n  - '0 6 1'\n"
    assert errors(text, DEBIAN) == [
        "r.yaml:5:11: uid_map[0]: '0 65534 1' maps onto host uid 65534, the user 'nobody' in /etc/passwd: that "
        "user could signal the container's processes and would own its files; map onto ids no one has",
        "r.yaml:5:24: uid_map[1]: '1 1000 2' maps onto host uid 1000, the user 'alice' in /etc/passwd: that "
        "user could signal the container's processes and would own its files; map onto ids no one has",
        "r.yaml:7:5: gid_map[0]: '0 6 1' maps onto host gid 6, the group 'disk' in /etc/group: its members "
        "would share the group of the container's processes and files; map onto ids no one has",
    ]


def test_a_map_overlapping_another_users_subordinate_range_is_refused() -> None:
    text = "uid_map: ['0 165535 65536']\ngid_map: ['0 200000 65536']\n"
    assert errors(text, DEBIAN) == [
        "r.yaml:5:11: uid_map[0]: '0 165535 65536' overlaps the subordinate uids 100000-165535 of 'alice' in "
        "/etc/subuid: that user can become them (newuidmap) and so signal the container's processes"
    ]
    many = HostIds(users=(("a", 300001), ("b", 300002)), subgids=(("bob", 300000, 10),))
    assert errors("uid_map: ['0 300000 65536']\ngid_map: ['0 300000 65536']\n", many) == [
        "r.yaml:5:11: uid_map[0]: '0 300000 65536' maps onto host uid 300001, the user 'a' in /etc/passwd (and 1 "
        "more in /etc/passwd): that user could signal the container's processes and would own its files; map "
        "onto ids no one has",
        "r.yaml:6:11: gid_map[0]: '0 300000 65536' overlaps the subordinate gids 300000-300009 of 'bob' in "
        "/etc/subgid: that user can become them (newgidmap) and so signal the container's processes",
    ]


def test_ctrshs_own_range_may_be_mapped() -> None:
    ids = HostIds(subuids=(("ctrsh", 300000, 65536),), subgids=(("ctrsh", 300000, 65536),))
    assert maps_of(plan("uid_map: ['0 300000 65536']\ngid_map: ['0 300000 65536']\n", ids)) == (
        "0 300000 65536",
        "0 300000 65536",
    )


def test_default_on_a_clean_host_is_100000() -> None:
    p = plan("", HostIds())
    assert maps_of(p) == ("0 100000 65536", "0 100000 65536")
    assert p.notes[0] == (
        "user namespace: the default map takes host ids 100000-165535 (uids and gids): the first 65536 from "
        "100000 up, in steps of 65536, that no user in /etc/passwd or group in /etc/group has and no range in "
        "/etc/subuid or /etc/subgid overlaps. It is not reserved: `useradd` may give it to the next user it "
        "makes. Adding 'ctrsh:100000:65536' to /etc/subuid and /etc/subgid reserves it (ctrsh then takes that "
        "range). Every user-namespace container with the default map runs on these same host ids."
    )


def test_default_skips_what_someone_has_or_can_become() -> None:
    p = plan("", DEBIAN)
    assert maps_of(p) == ("0 165536 65536", "0 165536 65536")
    assert "overlaps (100000-165535 taken). It is not reserved" in p.notes[0]
    # a uid in /etc/passwd, a gid in /etc/group, and a subordinate gid range: each moves it on
    ids = HostIds(users=(("x", 120000), ("z", 300000)), groups=(("g", 170000),), subgids=(("y", 231072, 1),))
    assert free_range(ids) == (362144, ["100000-165535", "165536-231071", "231072-296607", "296608-362143"])
    assert "(100000-165535, 165536-231071, 231072-296607 ... taken)" in default_maps(ids).note


def test_default_is_ctrshs_subordinate_ranges() -> None:
    ids = HostIds(
        subuids=(("alice", 100000, 65536), ("ctrsh", 500000, 65536)),
        subgids=(("alice", 100000, 65536), ("ctrsh", 600000, 100000)),
    )
    p = plan("", ids)
    assert maps_of(p) == ("0 500000 65536", "0 600000 65536")
    assert p.notes[0] == (
        "user namespace: the default map takes host uids 500000-565535 and gids 600000-665535: the subordinate "
        "ranges /etc/subuid and /etc/subgid give the user 'ctrsh' (as Docker's userns-remap takes dockremap's), "
        "which no other user has or can become. Every user-namespace container with the default map runs on "
        "these same host ids."
    )


def test_ctrshs_ranges_that_cannot_be_used_are_a_recipe_error() -> None:
    small = HostIds(subuids=(("ctrsh", 500000, 1000),), subgids=(("ctrsh", 500000, 65536),))
    assert errors("", small) == [
        "r.yaml:3:13: the default map: the range 500000:1000 of 'ctrsh' in /etc/subuid has fewer than 65536 ids; "
        "give it 65536 (e.g. 'ctrsh:500000:65536')"
    ]
    shared = HostIds(users=(("svc", 500010),), subuids=(("ctrsh", 500000, 65536),), subgids=(("ctrsh", 100000, 65536),))
    assert errors("", shared) == [
        "r.yaml:3:13: the default map (from 'ctrsh''s ranges): '0 500000 65536' maps onto host uid 500010, the "
        "user 'svc' in /etc/passwd: that user could signal the container's processes and would own its files; "
        "map onto ids no one has"
    ]


def test_without_user_the_ids_are_not_looked_at() -> None:
    text = "name: x\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n"
    compile_plan(parse(text, "r.yaml"), Facts(ids=HostIds(subuids=(("ctrsh", 1, 1),), subgids=(("ctrsh", 1, 1),))))
