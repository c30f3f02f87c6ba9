"""Plan compilation: golden files per recipe, and the rules compile enforces.

Regenerate goldens after an intended change: CTRSH_UPDATE_GOLDEN=1 pytest tests/unit
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path

import pytest

from ctrsh.compile import compile_plan
from ctrsh.errors import RecipeError
from ctrsh.export import export_script
from ctrsh.facts import Facts
from ctrsh.hostfiles import HostFiles, TarballFact
from ctrsh.recipe import Recipe, load, parse
from ctrsh.render import render_plan

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"
FACTS = Facts()  # the documented defaults, so goldens read like a real host


def facts_for(recipe: Recipe) -> Facts:
    """FACTS, plus host files as if the repository were checked out in /src/ctrsh and every path
    the recipe names existed (a tarball with a fixed hash): goldens do not depend on this machine."""
    files = HostFiles(base="/src/ctrsh/recipes")
    r = recipe.rootfs
    for local in (r.directory.path if r.directory else None, *(m.source for m in recipe.mounts if m.type == "bind")):
        if local:
            files.kinds[files.host_path(local)] = "dir"
    if r.tarball:
        files.kinds[files.host_path(r.tarball.path)] = "file"
        files.tarballs[files.host_path(r.tarball.path)] = TarballFact("ab" * 32)
    return dataclasses.replace(FACTS, files=files)


def golden(path: Path, text: str) -> None:
    if os.environ.get("CTRSH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with CTRSH_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path.name} changed; if intended, run with CTRSH_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_plan_golden(recipe: Path) -> None:
    from ctrsh import group

    g = group.load(f"recipes/{recipe.name}")
    if not g.single:  # several containers (containers:): the group's plan and its one script
        gp = group.compile_group(g, group.MemberFacts(tuple(facts_for(r) for r in g.containers)))
        golden(GOLDEN / f"{recipe.stem}.plan", group.render(gp))
        golden(GOLDEN / f"{recipe.stem}.sh", group.export(gp))
        return
    loaded = load(f"recipes/{recipe.name}")
    plan = compile_plan(loaded, facts_for(loaded))
    golden(GOLDEN / f"{recipe.stem}.plan", render_plan(plan))
    golden(GOLDEN / f"{recipe.stem}.sh", export_script(plan))


def plan_of(text: str, facts: Facts = FACTS):  # type: ignore[no-untyped-def]
    return compile_plan(parse(text, "r.yaml"), facts)


BASE = "name: box\nrootfs: {busybox: {}}\nprocess: {args: [/bin/true]}\n"


def test_default_namespaces_follow_the_host() -> None:
    start = plan_of(BASE).steps[-1].argv
    assert "--cgroup" in start and "--pid" in start
    start = plan_of(BASE, Facts(cgroup_ns=False)).steps[-1].argv
    assert "--cgroup" not in start and "--pid" in start


def test_cgroup_namespace_on_a_host_without_it() -> None:
    with pytest.raises(RecipeError) as e:
        plan_of(BASE + "namespaces: [mount, cgroup]\n", Facts(cgroup_ns=False))
    assert str(e.value) == "r.yaml:4:13: this kernel has no cgroup namespaces; remove 'cgroup'"


def test_hostname_needs_uts() -> None:
    with pytest.raises(RecipeError) as e:
        plan_of(BASE + "namespaces: [mount, pid]\nhostname: h\n")
    assert (
        str(e.value) == "r.yaml:5:11: hostname: setting a hostname needs the 'uts' namespace (else it renames the host)"
    )


def test_without_net_and_uts_nothing_touches_them() -> None:
    plan = plan_of(BASE + "namespaces: [mount, pid]\n")
    text = "\n".join(s.command for s in plan.steps)
    assert "netns" not in text and "--net" not in text and "hostname" not in text and "--uts" not in text
    assert {s.phase for s in plan.steps} == {"rootfs", "namespaces", "filesystem", "cgroups", "security", "process"}


def test_every_host_change_has_an_undo() -> None:
    plan = plan_of(BASE)
    undos = [s.undo for s in plan.steps if s.undo]
    assert ("ip", "netns", "delete", "ctrsh-box") in undos
    assert ("umount", "--recursive", "/run/ctrsh/box/ns") in undos
    assert ("rm", "-rf", "--one-file-system", "/run/ctrsh/box") in undos
    # mounts made through nsenter live in the container's mount namespace and need none
    for s in plan.steps:
        if s.argv[0] == "mount":
            assert s.undo, s.command
        if s.argv[0] == "nsenter" and "mount" in s.argv:
            assert s.argv[1].startswith("--mount="), s.command


def test_recipe_text_stays_one_argument() -> None:
    nasty = "$(touch /tmp/pwned); echo 'x' \"y\" `id` \\ ; rm -rf /"
    plan = plan_of(f"name: box\nrootfs: {{busybox: {{}}}}\nprocess: {{args: [/bin/echo, {json.dumps(nasty)}]}}\n")
    start = plan.steps[-1]
    assert start.argv[-1] == nasty and start.argv[-2] == "/bin/echo"
    for step in plan.steps:
        assert shlex.split(step.command) == list(step.argv)  # what is printed parses back to what runs
    assert start.command in export_script(plan)


def test_env_cwd_and_hostname_reach_the_start_step() -> None:
    text = "name: box\nrootfs: {busybox: {}}\nhostname: web\n"
    plan = plan_of(text + "process: {args: [/bin/true], cwd: /srv, env: {A: '1', PATH: /x}}\n")
    argv = plan.steps[-1].argv
    start = argv.index("ctrsh-start")
    assert argv[start + 1 : start + 5] == (
        plan_of(text + "process: {args: [a]}\n").steps[-1].argv[start + 1],
        "/srv",
        "/x",
        "4",
    )
    env = argv[start + 5 : argv.index("/bin/true")]
    assert env == ("PATH=/x", "HOME=/root", "HOSTNAME=web", "A=1")  # recipe env overrides defaults
    assert "hostname" in plan.steps[[s.argv[0] for s in plan.steps].index("unshare")].argv


def test_cached_steps_are_marked() -> None:
    plan = plan_of(BASE)
    kept = {s.creates for s in plan.steps if s.keep}
    assert kept == {"/var/lib/ctrsh/images/busybox", "/var/lib/ctrsh/dev-2"}
    assert all(s.phase == "rootfs" and s.creates for s in plan.steps if s.keep)
    only_if_missing = {s.creates for s in plan.steps if s.creates and not s.keep}
    assert only_if_missing == {"/run/ctrsh", "/var/lib/ctrsh/containers"}
    render = render_plan(plan)  # the teardown lists what apply undoes after a run, not build clean-ups
    assert "busybox.tmp" not in render.split("== teardown")[1]


def test_only_the_last_step_is_foreground() -> None:
    plan = plan_of(BASE)
    assert [s.foreground for s in plan.steps].count(True) == 1 and plan.steps[-1].foreground
