"""Several containers in one recipe (`containers:`): errors at the item, one Plan each, plan and export."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctrsh import group
from ctrsh.errors import RecipeError
from ctrsh.facts import Facts, NetworkFacts
from ctrsh.recipe import parse

ROOT = Path(__file__).resolve().parents[2]


def errors(text: str, facts: Facts | None = None, running: frozenset[str] = frozenset()) -> list[str]:
    with pytest.raises(RecipeError) as e:
        g = group.parse(text, "g.yaml")
        group.compile_group(g, group.MemberFacts(tuple(facts or Facts() for _ in g.containers), running))
    return str(e.value).splitlines()


def compiled(text: str, facts: Facts | None = None) -> group.GroupPlan:
    g = group.parse(text, "g.yaml")
    return group.compile_group(g, group.MemberFacts(tuple(facts or Facts() for _ in g.containers)))


BAD = """\
name: web
network: {mode: brige}
rootfs: {busybox: {}}
containers:
  - name: web
    process: {args: [httpd, -f]}
    detach: yes please
  - name: side
    network: {mode: container, container: late}
    process: {args: true}
  - name: late
    hostnme: x
    process: {args: [/bin/true]}
  - name: late
    rootfs: {busybox: {}, tarball: {path: x.tar}}
    process: {args: [/bin/true]}
  - [not, a, mapping]
"""


def test_every_problem_of_every_item_at_once_at_its_position() -> None:
    assert errors(BAD) == [
        "g.yaml:1:7: name: the group is named 'web', as containers[0] is; give the group a name of its own "
        "(`ctrsh destroy NAME` takes either)",
        # a bad default is reported once, where it is written, not again for each item that inherits it
        "g.yaml:2:17: network.mode: unknown value 'brige'; did you mean 'bridge'? (one of: none, host, bridge, container)",
        "g.yaml:7:13: containers[0].detach: expected a boolean (true/false), got a string ('yes please')",
        "g.yaml:10:21: containers[1].process.args: expected a list, got a boolean (true)",
        "g.yaml:12:5: unknown key 'hostnme' in containers[2]; did you mean 'hostname'?",
        "g.yaml:14:11: containers[3].name: 'late' is already the name of containers[2]; each container needs a "
        "name of its own",
        "g.yaml:15:13: containers[3].rootfs: set exactly one of: busybox, debootstrap, tarball, directory",
        "g.yaml:17:5: containers[4]: expected a mapping (one container's keys), got a list",
    ]


def test_a_missing_key_without_a_default_is_the_items() -> None:
    text = (
        "name: pod\ncontainers:\n  - name: a\n    process: {args: [/bin/true]}\n  - {name: b, rootfs: {busybox: {}}}\n"
    )
    assert errors(text) == [
        "g.yaml:3:5: missing required key 'containers[0].rootfs'",
        "g.yaml:5:5: missing required key 'containers[1].process'",
    ]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ("containers: []\n", "g.yaml:3:13: containers: the list is empty; give at least one container"),
        ("containers: {a: 1}\n", "g.yaml:3:13: containers: expected a list of containers, got a mapping"),
        ("containers:\n  - {name: a, process: {args: [sh]}}\nextra: 1\n", "g.yaml:5:1: unknown key 'extra' (known: "
         "name, containers, rootfs, namespaces, security, resources, readonly, mounts, dns, network)"),
    ],
)  # fmt: skip
def test_the_list_itself(items: str, message: str) -> None:
    assert errors("name: pod\nrootfs: {busybox: {}}\n" + items) == [message]


JOIN = """\
name: pod
rootfs: {busybox: {}}
containers:
  - name: early
    network: {mode: container, container: late}
    process: {args: [/bin/true]}
  - name: hostly
    network: {mode: host}
    process: {args: [/bin/true]}
  - name: done
    process: {args: [/bin/true]}
    detach: false
  - name: j1
    network: {mode: container, container: hostly}
    process: {args: [/bin/true]}
  - name: j2
    network: {mode: container, container: done}
    process: {args: [/bin/true]}
  - name: late
    process: {args: [/bin/true]}
"""


def test_who_joins_whom() -> None:
    assert errors(JOIN) == [
        "g.yaml:5:43: containers[0].network.container: 'late' is containers[5], which starts after this one; "
        "list it before the containers that join its network",
        "g.yaml:14:43: containers[3].network.container: 'hostly' has no network namespace of its own (its network "
        "mode is 'host'); join the container that has one",
        "g.yaml:17:43: containers[4].network.container: 'done' runs to its end (detach: false) before this one "
        "starts, so there is no network left to join; let it run detached",
    ]


OUTSIDE = "name: pod\nrootfs: {busybox: {}}\ncontainers:\n  - name: a\n    network: {mode: container, container: x}\n"
OUTSIDE += "    process: {args: [/bin/true]}\n  - {name: b, process: {args: [/bin/true]}}\n"


def test_joining_a_container_outside_the_list_needs_it_running() -> None:
    assert errors(OUTSIDE) == [
        "g.yaml:5:43: containers[0].network.container: no container 'x' in this recipe, nor running here "
        "(see `ctrsh ps`)"
    ]
    g = group.parse(OUTSIDE, "g.yaml")
    assert group.compile_group(g, group.MemberFacts((Facts(), Facts()), frozenset({"x"}))).plans[0].name == "a"
    assert group.compile_group(g, group.MemberFacts((Facts(), Facts()), unknown=True)).plans  # plan without root


def test_compile_problems_name_the_item_and_point_into_it() -> None:
    text = """\
name: pod
rootfs: {busybox: {}}
namespaces: [mount, cgroup]
network: {mode: host}
containers:
  - {name: a, process: {args: [/bin/true]}}
  - name: b
    network: {mode: bridge, address: 10.88.0.1}
    namespaces: [mount, net]
    process: {args: [/bin/true]}
"""
    assert errors(text, Facts(cgroup_ns=False)) == [
        # the default's problem, once per container that inherits it, at the default
        "g.yaml:3:13: containers[0] (a): this kernel has no cgroup namespaces; remove 'cgroup'",
        "g.yaml:8:38: containers[1] (b): network.address: 10.88.0.1 is the gateway (the bridge's)",
    ]


def test_containers_on_one_bridge_get_different_addresses_and_not_the_same_host_port() -> None:
    two = "name: pod\nrootfs: {busybox: {}}\nnetwork: {mode: bridge, publish: ['8080:80']}\ncontainers:\n"
    two += "  - {name: a, process: {args: [/bin/true]}}\n  - {name: b, process: {args: [/bin/true]}}\n"
    assert errors(two) == [
        "g.yaml:3:35: containers[1] (b): network.publish[0]: host port 8080/tcp is published by container 'a'"
    ]
    gp = compiled(two.replace(", publish: ['8080:80']", ""), Facts(network=NetworkFacts(leases=(("10.88.0.2", "x"),))))
    addrs = [next(s.argv[-3] for s in p.steps if s.argv[3:5] == ("addr", "add")) for p in gp.plans]
    assert addrs == ["10.88.0.3/16", "10.88.0.4/16"]  # x holds .2; b sees a's lease


def test_defaults_and_how_each_starts() -> None:
    g = group.load(str(ROOT / "recipes/pod.yaml"))
    web, side, client = g.containers
    assert web.network == client.network and web.network is not None and web.network.mode == "bridge"
    assert side.network is not None and side.network.container == "web"  # an item's own key replaces the default
    assert web.rootfs == side.rootfs == client.rootfs
    assert g.detached() == (True, True, False) and g.detached(all_=True) == (True, True, True)
    # positions are the item's own: compile's problems point into the item
    assert side.positions["network.container"] == (16, 43) and side.problem("process.args", "x").line == 19


def test_a_one_container_recipe_is_what_it_always_was() -> None:
    text = (ROOT / "recipes/hello.yaml").read_text()
    g = group.parse(text, "recipes/hello.yaml")
    assert g.single and g.containers[0] == parse(text, "recipes/hello.yaml")
    assert group.parse("name: containers\nrootfs: {busybox: {}}\nprocess: {args: [/bin/true]}\n", "r").single


def test_each_container_records_its_group_once_its_state_dir_exists() -> None:
    gp = compiled((ROOT / "recipes/pod.yaml").read_text())
    for i, plan in enumerate(gp.plans):
        steps = [s.argv for s in plan.steps]
        tag = next(k for k, a in enumerate(steps) if a[-1] == f"/run/ctrsh/{plan.name}/group")
        assert steps[tag][-2] == f"pod {i}"
        assert "ctrsh-mark" in steps[tag - 1]  # right after the state dir is made and marked


@pytest.fixture
def script(tmp_path: Path) -> tuple[Path, str, group.GroupPlan]:
    gp = compiled((ROOT / "recipes/pod.yaml").read_text())
    text = group.export(gp)
    path = tmp_path / "pod.sh"
    path.write_text(text)
    return path, text, gp


def test_export_is_one_script_that_starts_them_in_order(script: tuple[Path, str, group.GroupPlan]) -> None:
    path, text, gp = script
    subprocess.run(["bash", "-n", str(path)], check=True)
    starts = [text.index(p.steps[-1].command) for p in gp.plans]
    assert starts == sorted(starts)
    web, side, client = gp.plans
    assert f"start_detached /run/ctrsh/web/ns/mnt /run/ctrsh/web/log {web.steps[-1].command}" in text
    assert f"start_detached /run/ctrsh/side/ns/mnt /run/ctrsh/side/log {side.steps[-1].command}" in text
    assert f"run_container {client.steps[-1].command}" in text
    assert "container_ns=/run/ctrsh/client/ns/mnt\n" in text  # signals go to the one in the foreground
    # undos are registered as each step runs, so the EXIT trap (newest first) stops client, then side, then web
    kills = [text.index(f"undo {s.undo_command!r}"[:40]) for p in gp.plans for s in p.steps[:1] if s.undo_command]
    assert kills == sorted(kills)
    assert text.index("ctrsh-release /run/ctrsh/network/leases-ctrsh0 web") < text.index(
        "ctrsh-release /run/ctrsh/network/leases-ctrsh0 client"
    )


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_export_is_shellcheck_clean(script: tuple[Path, str, group.GroupPlan]) -> None:
    out = subprocess.run(["shellcheck", str(script[0])], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "", out.stdout


def test_plan_shows_each_container_under_a_heading() -> None:
    text = group.render(compiled((ROOT / "recipes/pod.yaml").read_text()))
    heads = [line for line in text.splitlines() if line.startswith("# =====")]
    assert heads == [
        "# ===== container 1 of 3: web, detached (apply goes on once its PID 1 runs; output in its log) =====",
        "# ===== container 2 of 3: side, detached (apply goes on once its PID 1 runs; output in its log) =====",
        "# ===== container 3 of 3: client, in the foreground (its output is the group's; when it ends, the group "
        "is torn down) =====",
        "# ===== group teardown: newest first: client, side, web =====",
    ]


def test_cli_reports_a_bad_group_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    for cmd in ("plan", "export", "apply"):
        r = subprocess.run([sys.executable, "-m", "ctrsh", cmd, str(bad)], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
        assert r.stderr.splitlines()[0].startswith(f"{bad}:1:7: name: the group is named 'web'")


def test_facts_survive_compile_unchanged() -> None:
    facts = Facts()
    g = group.load(str(ROOT / "recipes/pod.yaml"))
    mf = group.MemberFacts(tuple(facts for _ in g.containers))
    group.compile_group(g, mf)
    assert mf.facts == (facts, facts, facts) and dataclasses.replace(facts) == Facts()  # compile is pure


def test_schema_takes_the_group_form() -> None:
    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(group.json_schema())
    jsonschema.Draft202012Validator.check_schema(group.json_schema())
    pod = yaml.safe_load((ROOT / "recipes/pod.yaml").read_text())
    hello = yaml.safe_load((ROOT / "recipes/hello.yaml").read_text())
    assert validator.is_valid(pod) and validator.is_valid(hello)
    no_rootfs = {k: v for k, v in pod.items() if k != "rootfs"}
    assert not validator.is_valid(no_rootfs)  # no default rootfs, and the items have none: as the loader says
    with pytest.raises(RecipeError):
        group.parse(yaml.safe_dump(no_rootfs), "g.yaml")
    assert not validator.is_valid({**pod, "containers": []})
    assert not validator.is_valid({**pod, "containers": [{**pod["containers"][0], "detach": "yes"}]})
    assert not validator.is_valid({**hello, "containers": pod["containers"]})  # process is not a default


def test_ps_shows_a_group_column_only_when_there_are_groups() -> None:
    from ctrsh import lifecycle

    rows = [
        lifecycle.Status("web", "running", 42, None, "httpd", True, "pod"),
        lifecycle.Status("job", "exited 3", None, None, "true", True),
    ]
    assert lifecycle.render_ps(rows, False).splitlines() == [
        "NAME  GROUP  STATE     PID  UPTIME  COMMAND",
        "web   pod    running   42   -       httpd",
        "job   -      exited 3  -    -       true",
    ]
    assert "GROUP" not in lifecycle.render_ps(rows[1:], False)
    assert [r["group"] for r in json.loads(lifecycle.render_ps(rows, True))] == ["pod", None]


def test_destroy_of_a_group_finds_its_containers_newest_first(tmp_path: Path) -> None:
    from ctrsh import groupapply

    facts = Facts(state_dir=str(tmp_path / "run"))
    for name, tag in (("web", "pod 0"), ("client", "pod 2"), ("side", "pod 1"), ("other", "box 0"), ("plain", None)):
        (tmp_path / "run" / name).mkdir(parents=True)
        if tag:
            (tmp_path / "run" / name / "group").write_text(tag + "\n")
    assert groupapply.destroy_targets(facts, "pod") == ["client", "side", "web"]
    assert groupapply.destroy_targets(facts, "box") == ["other"]
    assert groupapply.destroy_targets(facts, "plain") is None  # a container's name: that container
    assert groupapply.destroy_targets(facts, "nothing") is None
    assert groupapply.member_of(facts, "side") == ("pod", 1)


def test_items_repeated_by_alias_are_counted_and_refused() -> None:
    args = "[" + ", ".join(["x"] * 200) + "]"
    text = f"name: p\nrootfs: {{busybox: {{}}}}\ncontainers:\n  - &i {{name: a, process: {{args: {args}}}}}\n"
    text += "  - *i\n" * 63
    lines = errors(text)
    assert "g.yaml:4:188: more than 10000 values (each use of an alias counts): refused" in lines
    assert len(lines) <= 101  # one line per problem, at most 100 and "too many problems"
    assert errors("name: p\ncontainers: [" + ", ".join(["{name: a}"] * 65) + "]\n") == [
        "g.yaml:2:13: containers: 65 containers; at most 64 in one recipe"
    ]


def test_detach_may_be_null() -> None:
    text = "name: p\nrootfs: {busybox: {}}\ncontainers:\n  - {name: a, process: {args: [sh]}, detach: ~}\n"
    text += "  - {name: b, process: {args: [sh]}, detach: true}\n"
    assert group.parse(text, "g.yaml").detached() == (True, True)
