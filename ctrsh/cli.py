"""The `ctrsh` command line: thin. Parse, call the library, render errors."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from . import __version__
from .errors import CtrshError, UsageError

if TYPE_CHECKING:  # imported lazily at run time: each command loads only what it needs
    from collections.abc import Callable

    from .facts import Facts, Paths
    from .plan import Plan
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


def _plan(recipe_path: str, state_dir: str | None, data_dir: str | None) -> tuple[Plan, Facts]:
    from .compile import compile_plan
    from .facts import detect
    from .hostfiles import gather
    from .ipam import survey_for
    from .recipe import load

    recipe = load(recipe_path)  # first: a bad recipe is reported before anything about the host
    facts = gather(recipe, detect(state_dir, data_dir))  # the files the recipe names: host facts too
    facts = survey_for(recipe, facts)  # mode bridge: the addresses in use
    return compile_plan(recipe, facts), facts


@app.command()
def apply(
    recipe: RecipeArg,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the commands as they run.")] = False,
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Run the container for real, in the foreground (needs root).

    Each command is printed on stderr as it runs (a valid shell script: notes are
    comments). The container uses your terminal; ctrsh exits with its exit code.
    When it exits, fails or is interrupted, everything is undone, newest first.
    """
    plan, facts = _plan(recipe, state_dir, data_dir)
    from . import preflight
    from .facts import Paths
    from .phases import cgroups
    from .signals import Interrupted
    from .trace import Trace

    paths = Paths(facts, plan.name)
    preflight.check(plan, facts, paths)
    oom_counter = cgroups.oom_counter(facts, plan.name)
    try:
        code = _apply_claiming(
            plan, facts, paths, Trace(quiet=quiet), lambda: _plan(recipe, state_dir, data_dir), oom_counter
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Interrupted as e:
        raise typer.Exit(128 + e.signum) from None
    raise typer.Exit(code)


def _apply_claiming(
    plan: Plan,
    facts: Facts,
    paths: Paths,
    trace: Trace,
    again: Callable[[], tuple[Plan, Facts]],
    oom_counter: str | None,
) -> int:
    """engine.apply; if another apply claimed our address (or port) between survey and claim, the claim
    step failed and was rolled back: survey and compile again, with the next free one (see ipam)."""
    from . import engine
    from .errors import StepFailed
    from .ipam import lost_race

    for _ in range(MAX_CLAIM_RETRIES):
        try:
            return engine.apply(plan, paths.journal, paths.nsfile("mnt"), trace, oom_counter)
        except StepFailed:
            if not lost_race(plan, facts):
                raise
            trace.note("another container took that address or port meanwhile: allocating again")
            plan, facts = again()
    return engine.apply(plan, paths.journal, paths.nsfile("mnt"), trace, oom_counter)


MAX_CLAIM_RETRIES = 16  # each lost race means another apply won: bounded by how many run at once


@app.command()
def plan(recipe: RecipeArg, state_dir: StateDir = None, data_dir: DataDir = None) -> None:
    """Print the commands `apply` would run, phase by phase, with why. Runs nothing; no root needed."""
    from .render import render_plan

    compiled, _ = _plan(recipe, state_dir, data_dir)
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

    compiled, _ = _plan(recipe, state_dir, data_dir)
    text = export_script(compiled)
    if output:
        write_script(output, text)
    else:
        sys.stdout.write(text)


@app.command()
def destroy(
    name: Annotated[str, typer.Argument(help="Container name (the recipe's `name`).")],
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Tear down a container left behind (ctrsh was killed): kill its processes, run its journaled undos."""
    from . import engine, owner, preflight
    from .facts import Paths, detect
    from .ipam import leftover_network, leftover_releases
    from .journal import Journal
    from .names import leftover_hosts
    from .recipe import check_name
    from .trace import Trace

    if msg := check_name(name):
        raise UsageError(msg)
    preflight.require_root("destroy")
    paths = Paths(detect(state_dir, data_dir), name)
    undos, refused = owner.leftovers(paths)  # only what this ctrsh made: marked dirs, known undos
    # Claims made but not yet journaled when ctrsh was killed: read off ctrsh's own registry.
    undos += [r for r in leftover_releases(paths.facts, name) if r not in undos]
    # The names step ran but its undo was not journaled: rewrite the bridge's hosts files without it.
    undos += [r for r in leftover_hosts(paths.facts, name) if r not in undos]
    if not undos and not refused:
        raise UsageError(f"no container {name!r} here: nothing of it in {paths.state}, {paths.layer} or netns")
    failed = []
    # Processes are found through the namespace file in the state dir, and the journal kept
    # there: only in a marked one ("" = none: nothing is looked up or written).
    ours = not owner.not_ours(paths.state, paths)
    mnt = paths.nsfile("mnt") if ours else ""
    if undos:
        failed = engine.undo_all(Journal(paths.journal if ours else "", [(u, None) for u in undos]), Trace(), mnt)
    rest = leftover_network(paths.facts, name)  # a step ran but its undo never reached the journal
    if rest:  # the veth of this container's name and rules tagged ctrsh:NAME, found on the host
        failed += engine.undo_all(Journal("", [(undo, None) for undo in rest]), Trace(), mnt)
    if failed or refused:
        raise CtrshError("teardown incomplete:\n" + "\n".join(refused + failed))


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
        rows.append((im.name, _size(im.size), created, ",".join(im.used_by) or "-", im.source))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


@app.command()
def rmi(
    name: Annotated[str, typer.Argument(help="Image name, as `ctrsh images` shows it.")],
    state_dir: StateDir = None,
    data_dir: DataDir = None,
) -> None:
    """Remove a cached image; refused while a container uses it."""
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

    from .recipe import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))


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
