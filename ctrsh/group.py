"""Several containers in one recipe: a small compose file, or a pod. Load, check, compile, show.

A recipe with a top-level `containers:` list is a *group*:

    name: pod                  # the group's name: `ctrsh destroy pod` removes them all
    network: {mode: bridge}    # a default for every container that does not set its own
    rootfs: {busybox: {}}      # (so are namespaces, security, resources, readonly, mounts, dns)
    containers:
      - name: web              # each item: today's per-container keys, plus `detach`
        process: {args: [httpd, -f, -p, "80"]}
      - name: client
        process: {args: [wget, -q, -O-, http://web/]}

A default is replaced as a whole by an item's own key (no deep merge: what an
item says is all there is). Problems are reported at the item they belong to
(`containers[1].process.args`), once for a default at its own line, all at once.

The invariant of DESIGN.md holds per container: each one compiles to its own pure
Plan, and a GroupPlan is those Plans plus their order and how each starts
(detached or in the foreground). `apply` runs them in order, `plan` prints each
under a heading, `export` writes one script for all (groupapply.py, export.py).
A recipe without `containers:` is one container, exactly as before (recipe.parse).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import recipe as recipes
from . import schema, yamlload
from .errors import Problem, RecipeError
from .facts import Facts, Paths
from .plan import Plan, Step
from .recipe import Recipe

# Per-container keys that may also be written once at the top, as every container's default.
# Not name, hostname or process: those are each container's own.
DEFAULTABLE = ("rootfs", "namespaces", "security", "resources", "readonly", "mounts", "dns", "network")
GROUP_FILE = "group"  # STATE/NAME/group: "GROUP INDEX", for `ctrsh ps` and `ctrsh destroy GROUP`
MAX_CONTAINERS = 64


@functools.cache
def _head_class() -> type:
    """The top level of a group recipe: its name, the containers (checked item by item, not here),
    and the defaults, each with the same type, checks and docs as the per-container key."""
    hints = typing.get_type_hints(Recipe)
    by_name = {f.name: f for f in dataclasses.fields(Recipe)}
    fields: list[Any] = [
        ("name", str, field(metadata={**by_name["name"].metadata, "doc": "The group's name (as a container's)."})),
        (
            "containers",
            list[str] | None,  # never converted as such: each item is a Recipe (see _item)
            field(default=None, metadata={"doc": "The containers, started in this order."}),
        ),
    ]
    for key in DEFAULTABLE:
        meta = {**by_name[key].metadata, "doc": f"Default for every container: {by_name[key].metadata['doc']}"}
        fields.append((key, hints[key] | None, field(default=None, metadata=meta)))
    return dataclasses.make_dataclass("GroupHead", fields, frozen=True)


@dataclass(frozen=True)
class Group:
    """A recipe's containers, in start order. A one-container recipe of today's form is a Group of
    one (`single`), which every command handles as it always has."""

    name: str
    containers: tuple[Recipe, ...]
    detach: tuple[bool | None, ...]  # each item's `detach:` as written (None: the default)
    file: str = "<recipe>"
    single: bool = False
    positions: dict[str, schema.Pos] = field(default_factory=dict, compare=False, repr=False)
    names: tuple[str | None, ...] = field(default=(), compare=False, repr=False)  # as written, also of bad items

    def detached(self, all_: bool = False) -> tuple[bool, ...]:
        """How each container starts: all but the last detached unless an item says otherwise;
        with `apply -d`, all of them."""
        last = len(self.containers) - 1
        return tuple(all_ or (d if d is not None else i < last) for i, d in enumerate(self.detach))

    def problem(self, path: str, message: str) -> Problem:
        key = path
        while key and key not in self.positions:
            key = key.rpartition(".")[0]
        line, col = self.positions.get(key, (1, 1))
        return Problem(self.file, line, col, message)


GROUP_RE = re.compile(r"\bcontainers\b")


def parse(text: str, file: str) -> Group:
    """A recipe's text as a Group: the list form, or one container (recipe.parse) as a Group of one."""
    if not GROUP_RE.search(text):  # cheap: a recipe that never says `containers` is one container
        return single(recipes.parse(text, file))
    text = text.removeprefix("\ufeff")
    yamlload.check_text(text, file)
    yamlload.check_events(text, file, recipes._loader())
    loader = recipes._loader()(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError:
            root = None  # recipe.parse reports it, its way
        if not (isinstance(root, MappingNode) and any(_key(k) == "containers" for k, _ in root.value)):
            return single(recipes.parse(text, file))
        checker = schema.Checker(file, construct=loader.construct_object)
        group = _group(checker, root)
    finally:
        loader.dispose()
    problems = checker.problems + (_cross_checks(group) if group is not None else [])
    if len(problems) > schema.MAX_PROBLEMS:  # a hostile file must not print a million lines
        problems = problems[: schema.MAX_PROBLEMS]
        last = max(problems, key=lambda p: (p.line, p.col))
        problems.append(Problem(file, last.line, last.col, "too many problems; the rest are not shown"))
    if problems or group is None:
        raise RecipeError(problems)
    return group


def _valid(r: object) -> bool:
    return r is not schema.INVALID


def load(path: str) -> Group:
    shown = "".join(c if c.isprintable() else "?" for c in path)
    return parse(yamlload.read(path, shown), shown)


def single(r: Recipe) -> Group:
    return Group(r.name, (r,), (False,), r.file, single=True)


def _key(node: Node) -> object:
    return node.value if isinstance(node, ScalarNode) and node.tag.endswith(":str") else None


def _span(node: Node) -> tuple[schema.Pos, schema.Pos]:
    return schema.pos(node), (node.end_mark.line + 1, node.end_mark.column + 1)


def _group(checker: schema.Checker, root: MappingNode) -> Group | None:
    pairs = checker._pairs(root, "") or []
    rest = [(k, v) for key, k, v in pairs if key != "containers"]
    head_node = MappingNode(root.tag, rest, root.start_mark, root.end_mark)
    if id(root) in checker._merged:
        checker._merged.add(id(head_node))
    head = checker.convert(head_node, _head_class(), "")
    defaults = {key: (k, v) for key, k, v in pairs if key in DEFAULTABLE}
    items = next(v for key, _, v in pairs if key == "containers")
    if not isinstance(items, SequenceNode):
        checker.error(items, f"containers: expected a list of containers, got {schema.describe(items, None)}")
        return None
    if not items.value:
        checker.error(items, "containers: the list is empty; give at least one container")
        return None
    if len(items.value) > MAX_CONTAINERS:
        checker.error(items, f"containers: {len(items.value)} containers; at most {MAX_CONTAINERS} in one recipe")
        return None
    members: list[Recipe] = []
    detach: list[bool | None] = []
    for i, item in enumerate(items.value):
        r, d = _item(checker, item, i, defaults)
        members.append(r)
        detach.append(d)
    positions = {**checker.positions, **{f"containers[{i}]": schema.pos(n) for i, n in enumerate(items.value)}}
    name = head.name if head is not schema.INVALID else (_name_of(root) or schema.INVALID)
    names = tuple(_name_of(n) for n in items.value)
    # Items that failed stay in (as INVALID) so the checks across the list still see the others.
    return Group(name, tuple(members), tuple(detach), checker.file, positions=positions, names=names)


def _name_of(item: Node) -> str | None:
    """An item's `name` as written, if it is a valid one (for the checks across the list)."""
    if isinstance(item, MappingNode):
        for k, v in item.value:
            if _key(k) == "name" and isinstance(v, ScalarNode) and v.tag.endswith(":str"):
                return None if recipes.check_name(v.value) else str(v.value)
    return None


def _item(
    checker: schema.Checker, item: Node, i: int, defaults: dict[str, tuple[Node, Node]]
) -> tuple[Any, bool | None]:
    path = f"containers[{i}]"
    if not isinstance(item, MappingNode):
        checker.error(item, f"{path}: expected a mapping (one container's keys), got {schema.describe(item, None)}")
        return schema.INVALID, None
    pairs = checker._pairs(item, path) or []
    detach: Any = None
    own = []
    for key, k, v in pairs:
        if key == "detach":
            detach = checker.convert(v, bool | None, f"{path}.detach")  # null: the default
        else:
            own.append((k, v))
    written = {key for key, _, _ in pairs}
    inherited = [pair for key, pair in defaults.items() if key not in written]
    merged = MappingNode(item.tag, inherited + own, item.start_mark, item.end_mark)
    before = len(checker.problems)
    r = checker.convert(merged, Recipe, path)
    # A problem in a default is reported once, at the top (by GroupHead), not again for each item.
    spans = [_span(n) for pair in inherited for n in pair]
    checker.problems[before:] = [
        p for p in checker.problems[before:] if not any(a <= (p.line, p.col) < b for a, b in spans)
    ]
    if r is schema.INVALID:
        return r, detach
    prefix = path + "."
    own_positions = {k[len(prefix) :]: v for k, v in checker.positions.items() if k.startswith(prefix)}
    own_positions[""] = schema.pos(item)
    return dataclasses.replace(r, positions=own_positions, file=checker.file), detach


def _net_of(r: Recipe) -> str:
    if r.network is not None:
        return r.network.mode
    return "none" if r.namespaces is None or "net" in r.namespaces else "host"


def _cross_checks(g: Group) -> list[Problem]:
    """What only the whole list can tell: names, the group's own name, who joins whom."""
    out: list[Problem] = []
    first: dict[str, int] = {}
    for i, name in enumerate(g.names or tuple(r.name for r in g.containers)):
        if name is None:
            continue
        if name in first:
            out.append(
                g.problem(f"containers[{i}].name", f"containers[{i}].name: {name!r} is already the name of "
                          f"containers[{first[name]}]; each container needs a name of its own")
            )  # fmt: skip
        first.setdefault(name, i)
    if _valid(g.name) and g.name in first:
        out.append(
            g.problem("name", f"name: the group is named {g.name!r}, as containers[{first[g.name]}] is; give the "
                      "group a name of its own (`ctrsh destroy NAME` takes either)")
        )  # fmt: skip
    detached = g.detached()
    for i, r in enumerate(g.containers):
        if not _valid(r) or r.network is None or r.network.mode != "container" or r.network.container is None:
            continue
        other, at = r.network.container, f"containers[{i}].network.container"
        j = first.get(other)
        if j is None:
            continue  # not in the list: a running container (gather_running checks, a host fact)
        if j > i:
            out.append(g.problem(at, f"{at}: {other!r} is containers[{j}], which starts after this one; "
                                 "list it before the containers that join its network"))  # fmt: skip
        elif j == i:
            continue  # the per-container check says "cannot join itself"
        elif not _valid(g.containers[j]):
            continue
        elif _net_of(g.containers[j]) not in ("none", "bridge"):
            out.append(g.problem(at, f"{at}: {other!r} has no network namespace of its own (its network mode is "
                                 f"{_net_of(g.containers[j])!r}); join the container that has one"))  # fmt: skip
        elif not detached[j]:
            out.append(g.problem(at, f"{at}: {other!r} runs to its end (detach: false) before this one starts, "
                                 "so there is no network left to join; let it run detached"))  # fmt: skip
    return out


# --- compile: pure, given each container's host facts --------------------------------------------


@dataclass(frozen=True)
class GroupPlan:
    """One Plan per container, in start order, and how each starts."""

    name: str
    source: str
    plans: tuple[Plan, ...]
    detach: tuple[bool, ...]
    states: tuple[str, ...] = ()  # each container's state dir (its log, for the exported script)

    def detached_all(self) -> GroupPlan:
        return dataclasses.replace(self, detach=tuple(True for _ in self.plans))


@dataclass(frozen=True)
class MemberFacts:
    """Host facts for each container (hostfiles.gather and ipam.survey_for, read before compiling),
    and which containers named by `network.container` but not in the list are running here."""

    facts: tuple[Facts, ...]
    running: frozenset[str] = frozenset()
    unknown: bool = False  # could not tell who runs (plan without root): not checked


def gather(group: Group, base: Facts) -> MemberFacts:
    """The host facts each container's compile needs. I/O: runs before compile_group."""
    from .hostfiles import gather as gather_files
    from .ipam import survey_for

    facts = tuple(survey_for(r, gather_files(r, base)) for r in group.containers)
    names = {r.name for r in group.containers}
    outside = {
        r.network.container
        for r in group.containers
        if r.network is not None and r.network.container and r.network.container not in names
    }
    running, unknown = set(), False
    for other in sorted(outside):
        held = _lock_held(base, other)
        if held is None:
            unknown = True
        elif held:
            running.add(other)
    return MemberFacts(facts, frozenset(running), unknown)


def _lock_held(facts: Facts, name: str) -> bool | None:
    """Is the container's name lock held (it runs)? None if we may not look (not root)."""
    import fcntl
    import os

    from .lock import lock_path

    try:
        fd = os.open(lock_path(facts.state_dir, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _with_earlier(r: Recipe, facts: Facts, earlier: list[tuple[str, Any]]) -> Facts:
    """The registry as it will be when this container claims: with the addresses and host ports of
    the containers started before it (compile stays pure; each claim step checks again for real)."""
    from .ipam import port_key
    from .netconfig import DEFAULT_BRIDGE

    if r.network is None or r.network.mode != "bridge" or not earlier:
        return facts
    bridge = r.network.bridge or DEFAULT_BRIDGE
    nf = facts.network
    leases = list(nf.leases)
    ports = list(nf.ports)
    subnet = nf.subnet
    for name, b in earlier:
        if b.bridge == bridge and all(who != name for _, who in leases):
            leases.append((str(b.address), name))
            subnet = subnet or str(b.subnet)
        ports += [(port_key(p.host_port, p.proto), name) for p in b.publish]
    net = dataclasses.replace(nf, leases=tuple(leases), ports=tuple(ports), subnet=subnet)
    return dataclasses.replace(facts, network=net)


def compile_group(group: Group, mf: MemberFacts) -> GroupPlan:
    """Each container's Plan, in order; every problem of every container at once (RecipeError)."""
    from .compile import compile_plan, printable, resolve

    if group.single:
        plan = compile_plan(group.containers[0], mf.facts[0])
        return GroupPlan(plan.name, plan.source, (plan,), (False,), (Paths(mf.facts[0], plan.name).state,))
    problems: list[Problem] = []
    plans: list[Plan] = []
    earlier: list[tuple[str, Any]] = []
    names = {r.name for r in group.containers}
    for i, (r, facts) in enumerate(zip(group.containers, mf.facts, strict=True)):
        at = f"containers[{i}]"
        net = r.network
        joins = net.container if net is not None else None
        if joins and joins not in names and not mf.unknown and joins not in mf.running:
            problems.append(
                group.problem(f"{at}.network.container", f"{at}.network.container: no container "
                              f"{joins!r} in this recipe, nor running here (see `ctrsh ps`)")
            )  # fmt: skip
        facts = _with_earlier(r, facts, earlier)
        try:
            ctx = resolve(r, facts)
            plan = compile_plan(r, facts)
        except RecipeError as e:
            problems += [dataclasses.replace(p, message=f"{at} ({r.name}): {p.message}") for p in e.problems]
            continue
        if ctx.network.bridge is not None:
            earlier.append((r.name, ctx.network.bridge))
        plans.append(_tagged(plan, ctx.paths, group.name, i))
    if problems:
        raise RecipeError(problems)
    states = tuple(Paths(f, r.name).state for r, f in zip(group.containers, mf.facts, strict=True))
    return GroupPlan(group.name, printable(group.file), tuple(plans), group.detached(), states)


def _tagged(plan: Plan, paths: Paths, group: str, index: int) -> Plan:
    """The container's plan with one more step: it records its group in its state dir, right after
    the state dir is made (so `destroy GROUP` finds it also after a kill -9 mid-start)."""
    from .phases.cgroups import WRITE

    step = Step(
        "namespaces",
        ("sh", "-c", WRITE, "ctrsh-write", f"{group} {index}", f"{paths.state}/{GROUP_FILE}"),
        f"Container {index + 1} of group {group!r}: recorded for `ctrsh ps` and `ctrsh destroy {group}` "
        "(removed with the state dir).",
    )
    steps = list(plan.steps)
    made = [
        k
        for k, s in enumerate(steps)
        if "ctrsh-mark" in s.argv[:4] or (s.argv[:1] == ("mkdir",) and paths.state in s.argv[1:])
    ]
    at = made[-1] + 1 if made else next((k for k, s in enumerate(steps) if s.foreground), len(steps))
    steps.insert(at, step)
    return dataclasses.replace(plan, steps=tuple(steps))


# --- plan and export ---------------------------------------------------------------------------


def _how(gp: GroupPlan, i: int) -> str:
    last = i == len(gp.plans) - 1
    if gp.detach[i]:
        return "detached (apply goes on once its PID 1 runs; output in its log)"
    return (
        "in the foreground (its output is the group's; when it ends, the group is torn down)"
        if last
        else ("in the foreground, to its end (then torn down) before the next starts")
    )


def render(gp: GroupPlan) -> str:
    from .render import render_plan

    names = [p.name for p in gp.plans]
    lines = [
        f'# ctrsh plan: group "{gp.name}" from {gp.source}: {len(gp.plans)} containers, '
        f"started in this order: {', '.join(names)}. Nothing has been run.",
        "# `ctrsh apply` starts each as said below; at the end (the last one exits, Ctrl-C, SIGTERM, or any",
        "# failure) it tears them all down, newest first. `ctrsh apply -d` starts them all detached.",
    ]
    for i, plan in enumerate(gp.plans):
        lines += ["", f"# ===== container {i + 1} of {len(gp.plans)}: {plan.name}, {_how(gp, i)} =====", ""]
        lines.append(render_plan(plan).rstrip("\n"))
    lines += ["", f"# ===== group teardown: newest first: {', '.join(reversed(names))} ====="]
    return "\n".join(lines) + "\n"


# Only in a group's exported script: a container that `apply` would run detached.
START_DETACHED = r"""
# A group member that `ctrsh apply` runs detached: in the background, in a session of its own, its
# output to its log; the script goes on once its PID 1 has left the host's root (pivot_root).
# $1 its mount namespace file, $2 its log, then its start command. The EXIT trap's undos stop it.
start_detached() {
  local ns=$1 log=$2 pid p i
  shift 2
  setsid "$@" </dev/null >"$log" 2>&1 &
  pid=$!
  disown "$pid"  # its end (the teardown's kill) is no news for the script's stderr
  for ((i = 0; i < 3000; i++)); do
    for p in /proc/[0-9]*; do
      if [[ $p/ns/mnt -ef $ns && ! $p/root -ef / ]]; then return 0; fi
    done
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$0: it ended at once: see $log" >&2
      return 1
    fi
    sleep 0.01
  done
  echo "$0: it did not start within 30 s: see $log" >&2
  return 1
}
"""


def export(gp: GroupPlan) -> str:
    """One bash script for the whole group: the containers in order, the detached ones in the
    background (start_detached); one EXIT trap undoes everything, newest first, so the container
    started last goes first. Signals go to the container in the foreground, as in `apply`."""
    from .export import export_header, export_steps

    if len(gp.plans) == 1 and not gp.detach[0]:
        from .export import export_script

        return export_script(gp.plans[0])
    fg = [p for p, d in zip(gp.plans, gp.detach, strict=True) if not d]
    main = fg[-1] if fg else gp.plans[-1]
    title = f'Group "{gp.name}" of {len(gp.plans)} containers ({", ".join(p.name for p in gp.plans)})'
    out = [export_header(main, title), START_DETACHED]
    for i, (plan, det) in enumerate(zip(gp.plans, gp.detach, strict=True)):
        out.append(f"\n# ===== container {i + 1} of {len(gp.plans)}: {plan.name}, {_how(gp, i)} =====\n")
        if not det and len(fg) > 1:
            out.append(f"container_ns={_q(plan.container_ns)}  # signals go to this one while it runs\n")
        start = f"start_detached {_q(plan.container_ns)} {_q(gp.states[i] + '/log')} " if det else None
        out += export_steps(plan, start=start)
    out.append('if ((stop)); then exit "$stop"; fi\n')
    out.append(
        "\n# The EXIT trap now tears everything down: the undos above, newest first "
        f"({', '.join(p.name for p in reversed(gp.plans))}).\n"
    )
    return "".join(out)


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --- JSON Schema -------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """`ctrsh schema`: one container (today's form) or a group. For a group it checks each item and the
    top level; the checks across the list (unique names, who joins whom) are the loader's alone."""
    one = recipes.recipe_schema()
    one = {k: v for k, v in one.items() if k not in ("$schema", "title")}
    item = dict(one)
    item["properties"] = {
        **one["properties"],
        "detach": {"type": ["boolean", "null"], "description": "Start detached (default: all but the last)."},
    }
    item["required"] = [k for k in one["required"] if k != "rootfs"]  # rootfs may come from the top
    head = schema.json_schema(_head_class())
    head["required"] = ["name", "containers"]
    head["properties"]["containers"] = {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_CONTAINERS,
        "items": item,
        "description": "The containers, started in this order; each with the keys of a one-container recipe.",
    }
    head["if"] = {"not": {"required": ["rootfs"]}}  # no default rootfs: every item needs its own
    head["then"] = {"properties": {"containers": {"items": {"required": ["rootfs"]}}}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ctrsh recipe",
        "anyOf": [one, head],
    }
