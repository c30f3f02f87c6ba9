"""`ctrsh apply` of a group (group.py): start its containers in order, tear them all down at the end.

Each container runs through the machinery one container has: its name lock,
preflight, `engine.apply` (with `-d`'s holder for the detached ones,
lifecycle.py), the claim retry. All but the last run detached unless an item
says `detach:`; the last in the foreground, its exit code the group's. At the
end — the last one exits, Ctrl-C, SIGTERM or any other stop signal, a failing
step, a detached container that ended at once — the detached ones are stopped
and destroyed, newest first, as `ctrsh destroy --force` would. With `-d` (or
when every item is detached) they are left running, and `ctrsh destroy GROUP`
removes them.

Between containers no signal handler of the engine is installed, so the group
notes stop signals itself and acts on them before the next container starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from types import FrameType

from .errors import CtrshError, StepFailed, UsageError
from .facts import Facts, Paths, detect
from .group import GROUP_FILE, Group, GroupPlan, MemberFacts, compile_group, gather
from .plan import Plan
from .trace import Trace


def compiled(group: Group, state_dir: str | None, data_dir: str | None) -> tuple[GroupPlan, MemberFacts]:
    mf = gather(group, detect(state_dir, data_dir))
    return compile_group(group, mf), mf


def _recompile(group: Group, index: int, state_dir: str | None, data_dir: str | None) -> tuple[Plan, Facts]:
    """Container `index` again, with a fresh survey (another apply took its address meanwhile): the
    containers started before it hold their leases for real by now."""
    gp, mf = compiled(group, state_dir, data_dir)
    return gp.plans[index], mf.facts[index]


def _again(group: Group, index: int, state_dir: str | None, data_dir: str | None) -> Callable[[], tuple[Plan, Facts]]:
    return lambda: _recompile(group, index, state_dir, data_dir)


def apply(
    group: Group,
    state_dir: str | None,
    data_dir: str | None,
    quiet: bool,
    grace: float,
    detach_all: bool,
) -> int:
    from . import preflight
    from .signals import STOPS, Interrupted, handlers

    gp, mf = compiled(group, state_dir, data_dir)  # every problem of every container before anything runs
    preflight.require_root("apply")
    if detach_all:
        gp = gp.detached_all()
    for plan, det in zip(gp.plans, gp.detach, strict=True):
        if det and plan.terminal:
            raise UsageError(f"{plan.name}: a detached container has no terminal: drop its `process.terminal` or `-d`")
    trace = Trace(quiet=quiet)
    pending: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    started: list[str] = []
    code = 0
    keep = False
    n = len(gp.plans)
    with handlers(dict.fromkeys(STOPS, note)):
        try:
            for i, (plan, det) in enumerate(zip(gp.plans, gp.detach, strict=True)):
                if pending:
                    raise Interrupted(pending[0])
                how = "detached" if det else "in the foreground"
                trace.note(f"group {gp.name}: container {i + 1} of {n}: {plan.name}, {how}")
                facts = mf.facts[i]
                code = _member(plan, facts, trace, _again(group, i, state_dir, data_dir), grace, det)
                if det:
                    started.append(plan.name)
                    for name in started:  # this one, and any earlier one that has ended meanwhile
                        _check_running(facts, name, trace)
                elif code != 0 and i < n - 1:
                    trace.note(f"group {gp.name}: {plan.name} exited {code}: the group stops here")
                    break
            if pending:
                raise Interrupted(pending[0])
            keep = all(gp.detach)
            if keep:
                trace.note(f"group {gp.name} runs detached: `ctrsh ps`, `ctrsh destroy {gp.name}`")
        finally:
            if not keep:
                failed = teardown(mf.facts[0], started, grace, trace, gp.name)
                if failed:
                    for f in failed:
                        with suppress(OSError, ValueError):
                            print(f"ctrsh: {f}", file=__import__("sys").stderr)
                    raise CtrshError("group teardown incomplete: " + "; ".join(failed))
    return code


def _member(
    plan: Plan, facts: Facts, trace: Trace, again: Callable[[], tuple[Plan, Facts]], grace: float, detach: bool
) -> int:
    """One container, as `ctrsh apply [-d]` runs it (cli.apply's body)."""
    from . import preflight
    from .cli import _apply_claiming, _running_message
    from .lock import NameLock, lock_path
    from .phases import cgroups

    paths = Paths(facts, plan.name)
    name_lock = NameLock(lock_path(facts.state_dir, plan.name))
    if not name_lock.try_acquire():
        raise preflight.NameInUse(_running_message(facts, plan.name))
    handed_over = False
    try:
        preflight.check(plan, facts, paths)
        oom_counter = cgroups.oom_counter(facts, plan.name)
        code = _apply_claiming(
            plan, facts, paths, trace, again, oom_counter,
            grace=grace, detach=paths if detach else None, lock_fd=name_lock.fd,
        )  # fmt: skip
        handed_over = detach
    finally:
        name_lock.release(remove=not handed_over)
    return code


def _check_running(facts: Facts, name: str, trace: Trace) -> None:
    """A detached container of a group that ended at once is a failed start (the next ones would
    find nothing to talk to): its log is shown, and the group is torn down."""
    from . import lifecycle

    st = lifecycle.status(facts, name)
    if st.running:
        return
    log = ""
    with suppress(OSError), open(f"{Paths(facts, name).state}/{lifecycle.LOG}", errors="replace") as f:
        log = "".join(f"\n    {line.rstrip()}" for line in f.readlines()[-8:])
    raise StepFailed(f"{name} ended at once ({st.state}); the last lines of its log:{log or ' (empty)'}")


def teardown(facts: Facts, names: list[str], grace: float, trace: Trace, group: str) -> list[str]:
    """Stop and destroy these detached containers, newest first; return what failed."""
    from .cli import _destroy_one

    if names:
        trace.note(f"group {group}: tear down the detached containers, newest first: {', '.join(reversed(names))}")
    failed = []
    for name in reversed(names):
        try:
            _destroy_one(facts, name, True, grace, quiet_missing=True, trace=trace)
        except CtrshError as e:
            failed.append(f"{name}: {e}")
    return failed


def members(facts: Facts, group: str) -> list[str]:
    """The containers of this state dir that belong to `group`, newest first (by their index)."""
    from . import lifecycle

    found = []
    for name in lifecycle.names(facts):
        tag = member_of(facts, name)
        if tag and tag[0] == group:
            found.append((tag[1], name))
    return [name for _, name in sorted(found, reverse=True)]


def member_of(facts: Facts, name: str) -> tuple[str, int] | None:
    """(group, index) from STATE/NAME/group, as the group's plan wrote it."""
    try:
        with open(f"{Paths(facts, name).state}/{GROUP_FILE}") as f:
            group, _, index = f.read().strip().partition(" ")
    except OSError:
        return None
    return (group, int(index)) if index.isdigit() else None


def destroy_targets(facts: Facts, name: str) -> list[str] | None:
    """`ctrsh destroy NAME` of a group: its containers, newest first; None if NAME is not a group here
    (or is a container's name: a container comes first)."""
    if os.path.lexists(Paths(facts, name).state):
        return None
    found = members(facts, name)
    return found or None
