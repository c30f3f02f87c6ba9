"""The `ctrsh` command line: thin. Parse, call the library, render errors."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from . import __version__
from .errors import CtrshError, UsageError

if TYPE_CHECKING:  # imported lazily at run time: each command loads only what it needs
    from collections.abc import Callable

    from .facts import Facts, Paths
    from .group import Group
    from .plan import Plan
    from .recipe import Recipe
    from .trace import Trace

app = typer.Typer(
    help=(
        "Build real Linux containers from YAML recipes with stock tools "
        "(unshare, nsenter, mount, pivot_root, ip), showing every command.\n\n"
        "A recipe compiles into a plan of commands. `plan` prints it, `apply` runs it, "
        "`export` writes it as a bash script. All three read the same plan."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

RecipeArg = Annotated[
    str, typer.Argument(help="Recipe file (YAML). See `ctrsh schema` and the README.", metavar="RECIPE")
]
StateDir = Annotated[
    str | None,
    typer.Option(
        "--state-dir",
        envvar="CTRSH_STATE_DIR",
        help="Runtime state (namespace files, writable layers).",
        show_default="/run/ctrsh",
    ),
]
DataDir = Annotated[
    str | None,
    typer.Option("--data-dir", envvar="CTRSH_DATA_DIR", help="Images, writable layers.", show_default="/var/lib/ctrsh"),
]


def _plan(
    recipe_path: str, state_dir: str | None, data_dir: str | None, loaded: Recipe | None = None
) -> tuple[Plan, Facts]:
    from .compile import compile_plan
    from .facts import detect
    from .hostfiles import gather
    from .ipam import survey_for
    from .recipe import load

    recipe = loaded or load(recipe_path)  # first: a bad recipe is reported before anything about the host
    facts = gather(recipe, detect(state_dir, data_dir))  # the files the recipe names: host facts too
    facts = survey_for(recipe, facts)  # mode bridge: the addresses in use
    return compile_plan(recipe, facts), facts


@app.command()
def apply(
    recipe: RecipeArg,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the commands as they run.")] = False,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", "-d", help="Run in the background (output to STATE/NAME/log); return once it runs."),
    ] = False,
    stop_timeout: Annotated[
        float, typer.Option("--stop-timeout", help="Seconds from SIGTERM to SIGKILL when stopping it.", min=0)
    ] = 10.0,
) -> None:
    """Run the container for real, in the foreground (needs root).

    Each command is printed on stderr as it runs (a valid shell script: notes are
    comments). The container uses your terminal; ctrsh exits with its exit code.
    When it exits, fails or is interrupted, everything is undone, newest first.
    With -d it runs detached: `ctrsh ps`, `exec`, `logs`, `stop` and `destroy` take it from there.
    A recipe with `containers:` starts them in order (all but the last detached) and tears them all down.
    """
    group = _group(recipe)
    if not group.single:
        from . import groupapply

        raise typer.Exit(_group_exit(lambda: groupapply.apply(group, state_dir, data_dir, quiet, stop_timeout, detach)))
    plan, facts = _plan(recipe, state_dir, data_dir, group.containers[0])
    from . import preflight
    from .facts import Paths
    from .lock import NameLock, lock_path
    from .phases import cgroups
    from .signals import Interrupted
    from .trace import Trace

    paths = Paths(facts, plan.name)
    preflight.require_root("apply")
    if detach and plan.terminal:
        raise UsageError("a detached container has no terminal: drop `process.terminal` or `-d`")
    name_lock = NameLock(lock_path(facts.state_dir, plan.name))
    if not name_lock.try_acquire():
        raise preflight.NameInUse(_running_message(facts, plan.name))
    handed_over = False
    try:
        preflight.check(plan, facts, paths)
        oom_counter = cgroups.oom_counter(facts, plan.name)
        try:
            code = _apply_claiming(
                plan, facts, paths, Trace(quiet=quiet), lambda: _plan(recipe, state_dir, data_dir), oom_counter,
                grace=stop_timeout, detach=paths if detach else None, lock_fd=name_lock.fd,
            )  # fmt: skip
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Interrupted as e:
            raise typer.Exit(128 + e.signum) from None
        handed_over = detach
    finally:
        name_lock.release(remove=not handed_over)  # detached: the holder keeps it
    raise typer.Exit(code)


def _group(recipe_path: str) -> Group:
    """The recipe as a group (a one-container recipe is a group of one, `single`)."""
    from .group import load

    return load(recipe_path)


def _group_exit(run: Callable[[], int]) -> int:
    from .signals import Interrupted

    try:
        return run()
    except KeyboardInterrupt:
        return 130
    except Interrupted as e:
        return 128 + e.signum


def _running_message(facts: Facts, name: str) -> str:
    from . import lifecycle

    st = lifecycle.status(facts, name)
    pid = f" (pid {st.pid})" if st.pid else ""
    return (
        f"a container named {name!r} is running{pid}: `ctrsh stop {name}` stops it, "
        f"`ctrsh destroy --force {name}` stops and removes it"
    )


def _apply_claiming(
    plan: Plan,
    facts: Facts,
    paths: Paths,
    trace: Trace,
    again: Callable[[], tuple[Plan, Facts]],
    oom_counter: str | None,
    **options: Any,
) -> int:
    """engine.apply; if another apply claimed our address (or port) between survey and claim, the claim
    step failed and was rolled back: survey and compile again, with the next free one (see ipam)."""
    from . import engine
    from .errors import StepFailed
    from .ipam import lost_race

    for _ in range(MAX_CLAIM_RETRIES):
        try:
            return engine.apply(plan, paths.journal, paths.nsfile("mnt"), trace, oom_counter, **options)
        except StepFailed:
            if not lost_race(plan, facts):
                raise
            trace.note("another container took that address or port meanwhile: allocating again")
            plan, facts = again()
    return engine.apply(plan, paths.journal, paths.nsfile("mnt"), trace, oom_counter, **options)


MAX_CLAIM_RETRIES = 16  # each lost race means another apply won: bounded by how many run at once


@app.command()
def plan(recipe: RecipeArg, state_dir: StateDir = None, data_dir: DataDir = None) -> None:
    """Print the commands `apply` would run, phase by phase, with why. Runs nothing; no root needed."""
    from .render import render_plan

    group = _group(recipe)
    if not group.single:
        from . import group as groups
        from .groupapply import compiled as compile_group

        sys.stdout.write(groups.render(compile_group(group, state_dir, data_dir)[0]))
        return
    compiled, _ = _plan(recipe, state_dir, data_dir, group.containers[0])
    sys.stdout.write(render_plan(compiled))


@app.command()
def export(
    recipe: RecipeArg,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Write a standalone bash script that does what `apply` does: `ctrsh export r.yaml > r.sh; sudo bash r.sh`."""
    from .export import export_script, write_script

    group = _group(recipe)
    if not group.single:
        from . import group as groups
        from .groupapply import compiled as compile_group

        text = groups.export(compile_group(group, state_dir, data_dir)[0])
    else:
        text = export_script(_plan(recipe, state_dir, data_dir, group.containers[0])[0])
    if output:
        write_script(output, text)
    else:
        sys.stdout.write(text)


NameArg = Annotated[str, typer.Argument(help="Container name (the recipe's `name`).")]
Timeout = Annotated[
    float, typer.Option("--time", "-t", help="Seconds from SIGTERM to SIGKILL (as `docker stop -t`).", min=0)
]


def _facts_for(name: str | None, state_dir: str | None, data_dir: str | None, what: str | None) -> Facts:
    from . import preflight
    from .facts import detect
    from .recipe import check_name

    if name is not None and (msg := check_name(name)):
        raise UsageError(msg)
    if what:
        preflight.require_root(what)
    return detect(state_dir, data_dir)


@app.command()
def destroy(
    name: Annotated[str | None, typer.Argument(help="Container name (the recipe's `name`).")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Every container of this state dir.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Stop a running container first.")] = False,
    time_: Timeout = 10.0,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Tear down a container: one that exited or was stopped, a detached one (with --force also a
    running one, stopped first as `stop` does), or one left behind when ctrsh was killed: kill its
    processes, run its journaled undos. NAME may be a group (a recipe's `containers:`): all of its
    containers, newest first."""
    from . import lifecycle
    from .groupapply import destroy_targets

    if (name is None) == (not all_):
        raise UsageError("name a container, or give --all")
    facts = _facts_for(name, state_dir, data_dir, "destroy")
    members = None if all_ else destroy_targets(facts, name or "")
    many = all_ or members is not None
    targets = lifecycle.names(facts) if all_ else members or [name or ""]
    failed = []
    for n in targets:
        try:
            _destroy_one(facts, n, force or (all_ and force), time_, quiet_missing=many)
        except CtrshError as e:
            if not many:
                raise
            failed.append(f"{n}: {e}")
    if failed:
        raise CtrshError("\n".join(failed))


def _destroy_one(
    facts: Facts, name: str, force: bool, grace: float, quiet_missing: bool = False, trace: Trace | None = None
) -> None:
    import time

    from . import engine, lifecycle, owner
    from .facts import Paths
    from .ipam import leftover_network, leftover_releases
    from .journal import Journal
    from .lock import NameLock, lock_path
    from .names import leftover_hosts
    from .trace import Trace

    trace = trace or Trace()
    paths = Paths(facts, name)
    name_lock = NameLock(lock_path(facts.state_dir, name))
    if not name_lock.try_acquire():
        if not force:
            raise CtrshError(_running_message(facts, name).replace("is running", "is running, not destroyed"))
        lifecycle.stop(facts, name, grace, trace)
        quiet_missing = True  # a foreground apply rolls back by itself: then nothing is left
        end = time.monotonic() + 15
        while not name_lock.try_acquire():
            if time.monotonic() > end:
                raise CtrshError(f"{name!r} is still running after it was stopped")
            time.sleep(0.02)
    try:
        undos, refused = owner.leftovers(paths)  # only what this ctrsh made: marked dirs, known undos
        # Claims made but not yet journaled when ctrsh was killed: read off ctrsh's own registry.
        undos += [r for r in leftover_releases(paths.facts, name) if r not in undos]
        # The names step ran but its undo was not journaled: rewrite the bridge's hosts files without it.
        undos += [r for r in leftover_hosts(paths.facts, name) if r not in undos]
        if not undos and not refused:
            if quiet_missing:
                return
            raise UsageError(f"no container {name!r} here: nothing of it in {paths.state}, {paths.layer} or netns")
        failed = []
        # The journal is kept in the state dir only if it is a marked one ("" = none: nothing is
        # written). The container's processes go with its cgroup, the first of the undos.
        ours = not owner.not_ours(paths.state, paths)
        if undos:
            journal = Journal(paths.journal if ours else "", [(u, None) for u in undos], owner.unsure(paths))
            failed = engine.undo_all(journal, trace)
        rest = leftover_network(paths.facts, name)  # a step ran but its undo never reached the journal
        if rest:  # the veth of this container's name and rules tagged ctrsh:NAME, found on the host
            failed += engine.undo_all(Journal("", [(undo, None) for undo in rest]), trace)
        if failed or refused:
            raise CtrshError("teardown incomplete:\n" + "\n".join(refused + failed))
    finally:
        name_lock.release(remove=True)


@app.command()
def stop(
    name: NameArg,
    time_: Timeout = 10.0,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Stop a running container as `docker stop` does: SIGTERM to its PID 1, SIGKILL after the grace time.
    A detached one then shows as exited until `destroy`; a foreground apply rolls back."""
    from . import lifecycle
    from .trace import Trace

    facts = _facts_for(name, state_dir, data_dir, "stop")
    st = lifecycle.status(facts, name)
    if not st.running:
        print(f"ctrsh: {name} is not running ({st.state})", file=sys.stderr)
        return
    lifecycle.stop(facts, name, time_, Trace())
    print(f"ctrsh: {name}: {lifecycle.status(facts, name).state}", file=sys.stderr)


@app.command()
def ps(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list of objects.")] = False,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """List containers: name, state (running, exited N, stopped), PID 1 on the host, uptime, command."""
    from . import lifecycle

    facts = _facts_for(None, state_dir, data_dir, "ps")  # the state dir and the locks are root's alone
    sys.stdout.write(lifecycle.render_ps([lifecycle.status(facts, n) for n in lifecycle.names(facts)], as_json))


@app.command()
def logs(
    name: NameArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the container ends.")] = False,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Print a detached container's output (STATE/NAME/log)."""
    import subprocess

    from . import lifecycle
    from .facts import Paths
    from .trace import Trace

    facts = _facts_for(name, state_dir, data_dir, "logs")
    argv = lifecycle.logs_argv(Paths(facts, name), follow)
    Trace().command(" ".join(__import__("shlex").quote(a) for a in argv))
    with contextlib.suppress(KeyboardInterrupt):
        raise typer.Exit(subprocess.run(argv, check=False).returncode)
    raise typer.Exit(130)


@app.command(context_settings={"allow_interspersed_args": False})
def exec(
    name: NameArg,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.", metavar="CMD...")],
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Keep stdin open.")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="A pty of its own (for a shell: -it).")] = False,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Run a command in a running container: in all its namespaces and cgroups, with its PID 1's
    privileges (capability bounding set, user, no_new_privs) and environment."""
    from . import engine, lifecycle
    from .facts import Paths
    from .trace import Trace

    facts = _facts_for(name, state_dir, data_dir, "exec")
    st = lifecycle.status(facts, name)
    pid = lifecycle.pid1(Paths(facts, name)) if st.running else None
    if pid is None:
        raise CtrshError(f"{name} is not running ({st.state})")
    argv = lifecycle.exec_argv(facts, name, pid, command, tty)
    Trace().command(" ".join(__import__("shlex").quote(a) for a in argv))
    if not interactive and not tty:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    raise typer.Exit(engine.run_foreground(argv, relay=not tty, forward=not tty))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


@app.command()
def images(state_dir: StateDir = None, data_dir: DataDir = None) -> None:
    """List cached images: name, source, size, created, containers using it."""
    import time

    from .facts import detect
    from .images import listing

    rows = [("NAME", "SIZE", "CREATED", "USED BY", "SOURCE")]
    for im in listing(detect(state_dir, data_dir)):
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(im.created))
        shifted = f" (+{im.shifted} shifted for user namespaces, in the size)" if im.shifted else ""
        rows.append((im.name, _size(im.size), created, ",".join(im.used_by) or "-", im.source + shifted))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


@app.command()
def rmi(
    name: Annotated[str, typer.Argument(help="Image name, as `ctrsh images` shows it.")],
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Remove a cached image and its shifted copies; refused while a container uses it."""
    from . import preflight
    from .facts import detect
    from .images import remove

    preflight.require_root("rmi")
    print(f"removed {remove(detect(state_dir, data_dir), name)}")


@app.command()
def volumes(data_dir: DataDir = None) -> None:
    """List named volumes (kept in the data dir after their containers are gone)."""
    from .facts import detect
    from .images import du

    base = f"{detect(None, data_dir).data_dir}/volumes"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    print(f"{'NAME':<24}  {'SIZE':>10}  PATH")
    for n in names:
        print(f"{n:<24}  {_size(du(f'{base}/{n}')):>10}  {base}/{n}")


@app.command()
def doctor() -> None:
    """Check this host: tools, kernel features (namespaces, overlayfs, cgroups, user namespaces), root.

    Prints each check, and for each gap the Debian package (or setting) that fills it. Changes
    nothing. Exits 1 if something every container needs is missing.
    """
    from . import doctor as doc

    results = doc.checks()
    sys.stdout.write(doc.render(results))
    if any(not c.ok and c.required for c in results):
        raise typer.Exit(1)


@app.command()
def schema() -> None:
    """Print the recipe format as JSON Schema (for editors and validators)."""
    import json

    from .group import json_schema

    print(json.dumps(json_schema(), indent=2))


def _version(value: bool) -> None:
    if value:
        print(f"ctrsh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def _std_fds() -> None:
    """A closed stdin, stdout or stderr becomes /dev/null, as in Docker: else the next file ctrsh (or
    `sh`) opens would take its number and leak into the container as its stdout."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _no_inherited_fds() -> None:
    """Descriptors the caller left open are not passed on to any command ctrsh runs: one of them
    could lead a container out of its root (runc CVE-2024-21626: a cwd of /proc/self/fd/N)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def main() -> NoReturn:
    _std_fds()
    _no_inherited_fds()
    try:
        app()
    except CtrshError as e:
        if not e.reported:
            with contextlib.suppress(OSError):  # stderr may be a closed pipe by now
                print(e if type(e).__name__ == "RecipeError" else f"ctrsh: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(0)
