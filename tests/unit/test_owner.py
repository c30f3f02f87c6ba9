"""What destroy may touch: netns names per state dir, and the undo shapes it accepts from a journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrsh.errors import RecipeError
from ctrsh.facts import Facts, Paths
from ctrsh.owner import known_undo

RECIPES = sorted(p.stem for p in Path("recipes").glob("*.yaml"))


def test_netns_name_is_tied_to_the_state_dir() -> None:
    assert Paths(Facts(), "web").netns == "ctrsh-web"  # the default dirs: as the README says
    a = Paths(Facts(state_dir="/srv/a"), "web").netns
    b = Paths(Facts(state_dir="/srv/b"), "web").netns
    assert a != b and a.startswith("ctrsh-") and a.endswith("-web") and len(a) == len("ctrsh-12345678-web")
    assert len(Paths(Facts(state_dir="/srv/a"), "n" * 63).netns) <= 255


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("facts", [Facts(), Facts(state_dir="/srv/st", data_dir="/srv/data")], ids=["default", "other"])
def test_every_undo_a_plan_makes_is_one_destroy_accepts(recipe: str, facts: Facts) -> None:
    # When a phase adds an undo of a new shape, this fails until owner.known_undo knows it.
    from ctrsh import group

    g = group.load(f"recipes/{recipe}.yaml")  # several containers (containers:): each one's plan
    try:
        plans = group.compile_group(g, group.MemberFacts(tuple(facts for _ in g.containers))).plans
    except RecipeError as e:  # a recipe that names files of another host (a tarball, a bind source)
        pytest.skip(str(e))
    for plan in plans:
        paths = Paths(facts, plan.name)
        for step in plan.steps:
            if step.undo:
                assert known_undo(step.undo, paths), step.undo


@pytest.mark.parametrize(
    "undo",
    [
        ("rm", "-rf", "--one-file-system", "/"),
        ("rm", "-rf", "--one-file-system", "/run/ctrsh"),
        ("rm", "-rf", "--one-file-system", "/run/ctrsh/other"),
        ("rm", "-rf", "/run/ctrsh/web"),
        ("rm", "-rf", "--one-file-system", "/var/lib/ctrsh/images/busybox"),
        ("rm", "-rf", "--one-file-system", "/var/lib/ctrsh/images/../../../etc.tmp"),
        ("rm", "-rf", "--one-file-system", "/var/lib/ctrsh/images/busybox.tmp-other"),
        ("rm", "-rf", "--one-file-system", "/var/lib/ctrsh/images/x/busybox.tmp"),
        ("ip", "netns", "delete", "ctrsh-other"),
        ("umount", "--recursive", "/"),
        ("sh", "-c", "reboot"),
    ],
)
def test_undos_ctrsh_never_makes_are_refused(undo: tuple[str, ...]) -> None:
    assert not known_undo(undo, Paths(Facts(), "web"))


def test_network_undos_only_for_this_container() -> None:
    from ctrsh import firewall, ipam

    paths = Paths(Facts(), "web")
    rule = ("sh", "-euc", firewall.RULE_UNDO, "ctrsh-undo", "nat", "OUTPUT", "-j", "DNAT")
    assert known_undo((*rule, "-m", "comment", "--comment", "ctrsh:web"), paths)
    assert not known_undo((*rule, "-m", "comment", "--comment", "ctrsh:other"), paths)
    assert not known_undo(rule, paths)  # untagged: not ctrsh's
    link = ("sh", "-euc", firewall.LINK_UNDO, "ctrsh-undo")
    assert not known_undo((*link, "eth0"), paths)
    release = firewall.locked(Facts(), ipam.RELEASE, "ctrsh-release")
    assert known_undo((*release, "/run/ctrsh/network/ports", "web", "tcp-8080"), paths)
    assert not known_undo((*release, "/run/ctrsh/network/ports", "other", "tcp-8080"), paths)
    assert not known_undo((*release, "/etc", "web", "passwd"), paths)
    forged = firewall.locked(Facts(), "reg=$1 me=$2\nshift 2\nreboot", "ctrsh-unshare")
    assert not known_undo((*forged, "/run/ctrsh/network/x", "web"), paths)


def test_names_undo_only_for_this_container_leaving_its_registry() -> None:
    from ctrsh import names

    paths = Paths(Facts(), "web")
    assert known_undo(names.hosts_argv(Facts(), "ctrsh0", "web"), paths)
    assert not known_undo(names.hosts_argv(Facts(), "ctrsh0", "other"), paths)  # takes another one out
    assert not known_undo(names.hosts_argv(Facts(), "ctrsh0", ""), paths)  # the start's, not an undo
    head = names.hosts_argv(Facts(), "ctrsh0", "web")[:-3]
    assert not known_undo((*head, "/etc", "web", names.MARK), paths)  # a dir outside the registry
    assert not known_undo((*head, "/run/ctrsh/network/leases-../..", "web", names.MARK), paths)
    assert not known_undo((*head, "/run/ctrsh/network/leases-ctrsh0", "web", "# else"), paths)
    forged = (*head[:4], "reboot", *head[5:])
    assert not known_undo((*forged, "/run/ctrsh/network/leases-ctrsh0", "web", names.MARK), paths)


def test_destroy_without_a_journal_removes_the_containers_use_records(tmp_path: Path) -> None:
    """An apply killed before its state dir existed (or an exported script killed) leaves its use
    record in DATA/images: `destroy` removes it, and only this container's."""
    import dataclasses

    from ctrsh.images import use_record
    from ctrsh.owner import leftovers

    facts = dataclasses.replace(Facts(), state_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"))
    (tmp_path / "data" / "images").mkdir(parents=True)
    mine = use_record(Paths(facts, "web"), f"{facts.data_dir}/images/busybox")
    theirs = use_record(Paths(facts, "db"), f"{facts.data_dir}/images/busybox")
    for record in (mine, theirs):
        Path(record).write_text("x\n")
    found, _ = leftovers(Paths(facts, "web"))
    assert [u for u in found if u[:2] == ("rm", "-f")] == [("rm", "-f", mine)]
