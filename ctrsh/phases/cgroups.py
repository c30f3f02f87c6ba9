"""Phase cgroups: give the container cgroups of its own, and write its resource limits there.

Every container gets them, with or without a `resources:` section: the cgroup is
how ctrsh knows all of the container's processes — also without a PID namespace,
also one that double-forks and leaves its mount namespace — and teardown kills
the cgroup (v2 `cgroup.kill`; v1 freeze, SIGKILL all, thaw), then removes it.

The container's first process joins its cgroups (`join_prefix`) before it
enters any namespace, so it is counted and limited from its first instruction,
and `unshare --cgroup` roots the container's cgroup namespace at its own cgroup.

The cgroups sit under a parent named for the ctrsh instance (`ctrsh` for the
default state dir, `ctrsh-<hash>` for another), so two instances never touch
each other's cgroups.
"""

from __future__ import annotations

import hashlib

from ..errors import Problem
from ..facts import DEFAULT_STATE, CgroupFacts, Facts
from ..plan import Argv, Step
from ..recipe import Recipe, Resources, parse_bytes
from . import Context

PERIOD_US = 100_000  # the CFS period: `cpus: 1.5` is 150 ms of CPU time per 100 ms

# Docker's (and runc's) device allowlist: the standard nodes may be opened, any node may be made
# (`m`: mknod) but not opened. null zero full random urandom, tty console ptmx, and the ptys.
DEVICE_ALLOW = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
)

# Writes one value into one cgroup file; the value and file arrive as $1 and $2, never as script text.
WRITE = 'printf "%s\\n" "$1" > "$2"'

# Runs first in the container's start step, on the host: join each cgroup (the files before `--`),
# then exec the rest. A join that fails stops the start (125: ctrsh failed, not the container).
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'

# Teardown: kill every process in the container's cgroups (and any cgroups below them), then remove
# them. $1 is the v1 freezer cgroup ('' on v2), the rest the container's cgroup dirs. v2 kills with
# one write to cgroup.kill; v1 freezes the cgroup so nothing forks while the list is read, SIGKILLs
# the list, and thaws it so the kills land. Repeated until the cgroups are empty. Idempotent: cgroups
# that are gone are skipped, so undoing what never happened succeeds.
KILL = """f=$1; shift
listed() { for d; do if [ -d "$d" ]; then find "$d" -name cgroup.procs -exec cat {} +; fi; done; }
n=0
while [ -n "$(listed "$@")" ]; do
  if [ "$n" -ge 100 ]; then echo "ctrsh: still running after 10 s:" $(listed "$@") >&2; exit 1; fi
  for d; do if [ -e "$d/cgroup.kill" ]; then echo 1 > "$d/cgroup.kill"; fi; done
  if [ -d "$f" ]; then
    echo FROZEN > "$f/freezer.state"
    i=0; while [ "$(cat "$f/freezer.state")" = FREEZING ] && [ $((i += 1)) -lt 100 ]; do sleep 0.01; done
  fi
  kill -9 $(listed "$@") 2>/dev/null || true
  if [ -d "$f" ]; then echo THAWED > "$f/freezer.state"; fi
  n=$((n + 1)); sleep 0.1
done
for d; do if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} +; fi; done"""

# The instance's parent cgroup, once no container of the instance uses it (no child cgroups).
# The parents go once no container uses them. Two teardowns at once may both see one empty, and
# another apply may make a child in it meanwhile: rmdir failing because it is gone or not empty
# is then the right outcome, not an error.
RMDIR_UNUSED = (
    'for d; do if [ -d "$d" ] && [ -z "$(find "$d" -mindepth 1 -type d)" ]; then rmdir "$d" 2>/dev/null || :; fi; done'
)


def parent_name(facts: Facts) -> str:
    """The instance's cgroup parent: one per state dir, so instances never meet."""
    if facts.state_dir == DEFAULT_STATE:
        return "ctrsh"
    return "ctrsh-" + hashlib.sha256(facts.state_dir.encode()).hexdigest()[:8]


def hierarchies(cg: CgroupFacts) -> list[str]:
    """The mount dirs a container has a cgroup in: one per v1 hierarchy (co-mounted controllers
    share one), the one unified mount on v2."""
    if cg.version == 2:
        return [cg.root]  # tracking needs no controller: a v2 host offering none still has cgroups
    return list(dict.fromkeys(mount for _, mount in cg.mounts))


def parents(facts: Facts) -> list[str]:
    return [f"{mount}/{parent_name(facts)}" for mount in hierarchies(facts.cgroups)]


def cgroup_dirs(facts: Facts, name: str) -> list[str]:
    """The container's cgroup, one dir per hierarchy."""
    return [f"{p}/{name}" for p in parents(facts)]


def cgroup_dir(facts: Facts, name: str, controller: str) -> str | None:
    """The container's cgroup dir where this controller's files are (None: the host lacks it)."""
    mount = facts.cgroups.mount(controller)
    return f"{mount}/{parent_name(facts)}/{name}" if mount else None


def devices_enforced(facts: Facts) -> bool:
    """Does the device cgroup keep the container from opening nodes beyond the standard ones?
    Only on v1: v2 needs an eBPF program no stock tool loads, so there the security phase drops
    CAP_MKNOD and mounts the root nodev instead. The same as `facts.device_cgroup`, which the
    security and filesystem phases read (`check` refuses facts where the two disagree)."""
    return facts.device_cgroup


def _devices_hierarchy(cg: CgroupFacts) -> bool:
    return cg.version == 1 and cg.mount("devices") is not None


def join_prefix(c: Context) -> Argv:
    """Put before the start step's argv: joins the container's cgroups, then execs the rest."""
    return join_argv(c.facts, c.recipe.name)


def join_argv(facts: Facts, name: str) -> Argv:
    files = [f"{d}/cgroup.procs" for d in cgroup_dirs(facts, name)]
    return ("sh", "-c", JOIN, "ctrsh-join", *files, "--")


def kill_undo(facts: Facts, name: str) -> Argv:
    """Kill everything in the container's cgroups and remove them; a no-op once they are gone.
    A pure function of the facts and the name, so `destroy` can rebuild it without the recipe."""
    freezer = cgroup_dir(facts, name, "freezer") if facts.cgroups.version == 1 else None
    return ("sh", "-c", KILL, "ctrsh-kill", freezer or "", *cgroup_dirs(facts, name))


def oom_counter(facts: Facts, name: str) -> str | None:
    """The file whose `oom_kill N` line counts the container's OOM kills (v1 memory.oom_control,
    v2 memory.events); read after the container exits, before teardown removes it."""
    d = cgroup_dir(facts, name, "memory")
    if d is None:
        return None
    return f"{d}/memory.oom_control" if facts.cgroups.version == 1 else f"{d}/memory.events"


def v1_shares(weight: int) -> int:
    """cgroup v2 cpu.weight (1-10000) -> v1 cpu.shares (2-262144), runc's conversion."""
    return 2 + ((weight - 1) * 262142) // 9999


def check(recipe: Recipe, facts: Facts) -> list[Problem]:
    """What the recipe's resources need from this host, and the rules between keys."""
    cg = facts.cgroups
    if cg.version == 0:
        return [recipe.problem("name", "this host has no cgroup filesystem at /sys/fs/cgroup; ctrsh needs one")]
    if facts.device_cgroup != _devices_hierarchy(cg):
        # the security phase keeps CAP_MKNOD only where this phase writes the device allowlist
        raise ValueError(f"inconsistent facts: device_cgroup={facts.device_cgroup} with cgroups {cg}")
    res = recipe.resources
    if res is None:
        return []
    problems = []
    need = {"cpus": "cpu", "cpu_weight": "cpu", "memory": "memory", "memory_swap": "memory", "pids": "pids"}
    for key, controller in need.items():
        if getattr(res, key) is not None and cg.mount(controller) is None:
            problems.append(recipe.problem(f"resources.{key}", f"this host has no {controller} cgroup controller"))
    if res.memory_swap is not None:
        swap = parse_bytes(res.memory_swap)
        if res.memory is None:
            problems.append(recipe.problem("resources.memory_swap", "memory_swap needs memory set too"))
        elif swap is not None and swap < (parse_bytes(res.memory) or 0):
            problems.append(
                recipe.problem(
                    "resources.memory_swap", "memory_swap is memory plus swap: it must be at least memory, or -1"
                )
            )
        if not cg.swap:
            problems.append(
                recipe.problem("resources.memory_swap", "this host does not account swap (boot with swapaccount=1)")
            )
    return problems


def _write(value: str, file: str, why: str) -> Step:
    return Step("cgroups", ("sh", "-c", WRITE, "ctrsh-write", value, file), why)


def _limits(c: Context, res: Resources) -> list[Step]:
    v1 = c.facts.cgroups.version == 1
    name = c.recipe.name
    cpu, memory, pids = (cgroup_dir(c.facts, name, k) or "" for k in ("cpu", "memory", "pids"))
    out: list[Step] = []
    if res.cpus is not None:
        quota = round(res.cpus * PERIOD_US)
        why = f"cpus {res.cpus:g}: at most {quota // 1000} ms of CPU time per {PERIOD_US // 1000} ms, over all cores."
        if v1:
            out.append(_write(str(PERIOD_US), f"{cpu}/cpu.cfs_period_us", "The CFS period the quota is counted in."))
            out.append(_write(str(quota), f"{cpu}/cpu.cfs_quota_us", why))
        else:
            out.append(_write(f"{quota} {PERIOD_US}", f"{cpu}/cpu.max", why))
    if res.cpu_weight is not None:
        if v1:
            shares = v1_shares(res.cpu_weight)
            why = (
                f"cpu_weight {res.cpu_weight} as v1 cpu.shares (runc: 2 + (weight - 1) * 262142 / 9999): "
                "its share of CPU time under contention."
            )
            out.append(_write(str(shares), f"{cpu}/cpu.shares", why))
        else:
            why = f"cpu_weight {res.cpu_weight}: its share of CPU time under contention (default 100)."
            out.append(_write(str(res.cpu_weight), f"{cpu}/cpu.weight", why))
    if res.memory is not None:
        limit = parse_bytes(res.memory) or 0
        why = f"memory {res.memory}: above {limit} bytes the kernel reclaims, then its OOM killer strikes."
        out.append(_write(str(limit), f"{memory}/{'memory.limit_in_bytes' if v1 else 'memory.max'}", why))
        out += _swap(c, res, limit, memory)
    if res.pids is not None:
        why = f"pids {res.pids}: fork fails beyond {res.pids} processes and threads; a fork bomb stops here."
        out.append(_write(str(res.pids), f"{pids}/pids.max", why))
    return out


def _swap(c: Context, res: Resources, limit: int, memory: str) -> list[Step]:
    """Docker's memory_swap: memory plus swap; by default twice memory; -1 unlimited."""
    if res.memory_swap is None and not c.facts.cgroups.swap:
        return []  # nothing to write, and the host could not take it
    if res.memory_swap is None:
        total, shown = 2 * limit, "by default twice memory"
    elif res.memory_swap.strip() == "-1":
        total, shown = -1, "-1: unlimited swap"
    else:
        total, shown = parse_bytes(res.memory_swap) or 0, f"memory_swap {res.memory_swap}"
    if c.facts.cgroups.version == 1:
        why = f"Memory plus swap ({shown}); set after the memory limit, which it may not be below."
        return [_write(str(total), f"{memory}/memory.memsw.limit_in_bytes", why)]
    value = "max" if total < 0 else str(total - limit)
    return [_write(value, f"{memory}/memory.swap.max", f"Swap on top of memory ({shown}).")]


def _devices(c: Context) -> list[Step]:
    d = cgroup_dir(c.facts, c.recipe.name, "devices")
    out = [
        Step(
            "cgroups",
            ("sh", "-c", WRITE, "ctrsh-write", "a", f"{d}/devices.deny"),
            "Devices: deny every node first, as Docker does; CAP_MKNOD alone then makes nodes it cannot open.",
        )
    ]
    # One write per rule (the kernel parses one a write), all in one step: a command each would
    # cost a fork and exec apiece for what is one idea.
    out.append(
        Step(
            "cgroups",
            ("sh", "-c", ALLOW_EACH, "ctrsh-allow", f"{d}/devices.allow", *DEVICE_ALLOW),
            "Devices: then allow, one rule a write: 'c *:* m' and 'b *:* m' (any node may be made, not opened), "
            "and 'rwm' for the standard nodes only: null, zero, full, random, urandom, tty, console, ptmx, ptys.",
        )
    )
    return out


ALLOW_EACH = 'f=$1; shift; for rule; do printf "%s\\n" "$rule" > "$f"; done'


def steps(c: Context) -> list[Step]:
    facts, name = c.facts, c.recipe.name
    cg = facts.cgroups
    parent_dirs = parents(facts)
    out = [
        Step(
            "cgroups",
            ("mkdir", "-p", *parent_dirs),
            "The parent of this ctrsh instance's cgroups (named for its state dir); removed once no container uses it.",
            undo=("sh", "-c", RMDIR_UNUSED, "ctrsh-rmdir", *parent_dirs),
        )
    ]
    enable = " ".join(f"+{k}" for k, _ in cg.mounts)
    if cg.version == 2 and enable:
        root = hierarchies(cg)[0]
        out.append(
            _write(
                enable,
                f"{root}/cgroup.subtree_control",
                "cgroup v2: let the root hand these controllers down (systemd hosts already do). "
                "Left on afterwards: other cgroups may rely on it.",
            )
        )
        out.append(
            _write(enable, f"{parent_dirs[0]}/cgroup.subtree_control", "... and the instance's parent to its children.")
        )
    hierarchy = "its own cgroup" if cg.version == 2 else "a cgroup in each hierarchy"
    out.append(
        Step(
            "cgroups",
            ("mkdir", *cgroup_dirs(facts, name)),
            f"The container's cgroup ({hierarchy}): all its processes, also ones that leave its namespaces. "
            "Teardown kills every process in it first, then removes it.",
            undo=kill_undo(facts, name),
        )
    )
    if c.recipe.resources is not None:
        out += _limits(c, c.recipe.resources)
    if devices_enforced(facts):
        out += _devices(c)
    return out
