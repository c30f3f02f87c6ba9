"""Compile a Recipe and host Facts into a Plan. Pure: no I/O, no side effects."""

from __future__ import annotations

from .errors import Problem, RecipeError
from .facts import Facts, Paths
from .hostfiles import TAR_SUFFIXES
from .netconfig import resolve as resolve_network
from .phases import Context, cgroups, filesystem, namespaces, network, process, rootfs, security
from .plan import Plan
from .recipe import ALL_NAMESPACES, VOLUME_RE, Recipe

PHASE_MODULES = (rootfs, namespaces, filesystem, network, cgroups, security, process)


def resolve(recipe: Recipe, facts: Facts) -> Context:
    """Fill in defaults that depend on the host; raise RecipeError for what the host cannot do."""
    problems: list[Problem] = []
    if recipe.namespaces is None:
        kinds = frozenset(k for k in ALL_NAMESPACES if k != "cgroup" or facts.cgroup_ns)
    else:
        kinds = frozenset(recipe.namespaces)
        if "cgroup" in kinds and not facts.cgroup_ns:
            problems.append(recipe.problem("namespaces", "this kernel has no cgroup namespaces; remove 'cgroup'"))
    kinds, net, net_problems = resolve_network(recipe, facts, kinds)  # mode host: no net namespace
    problems += net_problems
    hostname: str | None = recipe.hostname or recipe.name
    if "uts" not in kinds:
        if recipe.hostname is not None:
            problems.append(
                recipe.problem("hostname", "setting a hostname needs the 'uts' namespace (else it renames the host)")
            )
        hostname = None
    if recipe.process.init and not facts.tini:
        problems.append(recipe.problem("process.init", "init needs tini-static on the host: apt-get install tini"))
    problems += cgroups.check(recipe, facts)
    problems += image_problems(recipe, facts) + mount_problems(recipe, facts)
    if "user" in kinds and recipe.process.terminal:
        problems.append(
            recipe.problem(
                "process.terminal",
                "a terminal is not supported with a user namespace yet: making the pty PID 1's controlling "
                "terminal takes it from script(1)'s session, which needs CAP_SYS_ADMIN on the host",
            )
        )
    if "user" in kinds and recipe.rootfs.directory:
        problems.append(
            recipe.problem(
                "namespaces",
                "a user namespace needs a copy of the image with its owners shifted, made once and cached; a "
                "rootfs directory may change under it: use a tarball of it (tar -C DIR -c .) instead",
            )
        )
    idmaps: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    idmap_note = ""
    if "user" in kinds:
        idmaps, idmap_note, id_problems = resolve_idmaps(recipe, facts)
        problems += id_problems
    if problems:
        raise RecipeError(problems)
    return Context(recipe, facts, Paths(facts, recipe.name), kinds, hostname, net, idmaps, idmap_note)


def resolve_idmaps(recipe: Recipe, facts: Facts) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], str, list[Problem]]:
    """(uid_map, gid_map), how the default was chosen, and the map lines whose host ids are someone's
    (an account in /etc/passwd or /etc/group, or another user's subordinate range)."""
    from .hostids import default_maps, line_problems

    problems: list[Problem] = []
    default = default_maps(facts.ids) if recipe.uid_map is None or recipe.gid_map is None else None
    maps: list[tuple[str, ...]] = []
    for kind, lines in (("uid", recipe.uid_map), ("gid", recipe.gid_map)):
        if lines is None:
            assert default is not None
            maps.append(default.uids if kind == "uid" else default.gids)
            continue
        norm = tuple(" ".join(line.split()) for line in lines)
        maps.append(norm)
        for i, line in enumerate(norm):
            key = f"{kind}_map[{i}]"
            problems += [recipe.problem(key, m) for m in line_problems(key, line, kind, facts.ids)]
    if default is not None:
        problems += [recipe.problem("namespaces", m) for m in dict.fromkeys(default.problems)]
    return (maps[0], maps[1]), default.note if default else "", problems


def compile_plan(recipe: Recipe, facts: Facts) -> Plan:
    ctx = resolve(recipe, facts)
    steps = tuple(step for module in PHASE_MODULES for step in module.steps(ctx))
    notes = tuple(note for module in PHASE_MODULES if hasattr(module, "notes") for note in module.notes(ctx))
    return Plan(
        name=recipe.name,
        source=printable(recipe.file),
        steps=steps,
        container_ns=ctx.paths.nsfile("mnt"),
        notes=notes,
        terminal=recipe.process.terminal,
        command=tuple(recipe.process.args),
        oom_counter=_oom_counter(ctx.paths.facts, recipe.name),
        lock=_lock(ctx.paths.facts, recipe.name),
    )


def _oom_counter(facts: Facts, name: str) -> str:
    from .phases.cgroups import oom_counter

    return oom_counter(facts, name) or ""


def _lock(facts: Facts, name: str) -> str:
    from .lock import lock_path

    return lock_path(facts.state_dir, name)


def printable(text: str) -> str:
    """The recipe path goes into comments: a newline in a file name must not start a command line."""
    return "".join(c if c.isprintable() else "?" for c in text)


LAYER_BAD = ",:\"'\\"  # overlayfs and mount(8) read these in a layer path: see facts.check_dir


def _bad_lower(path: str, facts: Facts) -> str | None:
    """Why a directory cannot be a container's read-only image: the host's root, or ctrsh's own
    dirs (a container would see every other container's layer and state), or one inside them."""
    if path == "/":
        return "is the host's root: a container's image must be a directory of its own"
    for own in (facts.data_dir, facts.state_dir):
        if path == own or path.startswith(own + "/") or own.startswith(path.rstrip("/") + "/"):
            return f"overlaps ctrsh's own {own}: a container would see others' layers and state"
    return None


def image_problems(recipe: Recipe, facts: Facts) -> list[Problem]:
    """The rootfs source against the host facts: the file or dir exists, a tarball stays inside."""
    r, files, out = recipe.rootfs, facts.files, []
    if r.tarball:
        path = files.host_path(r.tarball.path)
        kind = files.kinds.get(path, "missing")
        fact = files.tarballs.get(path)
        at = "rootfs.tarball.path"
        if not path.endswith(TAR_SUFFIXES):
            out.append(recipe.problem(at, f"{path!r} is not a .tar, .tar.gz, .tar.xz or .tar.zst file name"))
        elif kind != "file":
            out.append(recipe.problem(at, f"{path!r} " + ("does not exist" if kind == "missing" else "is not a file")))
        elif fact is None or fact.problem:
            why = fact.problem if fact else "not read"
            out.append(recipe.problem(at, f"tarball refused: {why}; nothing was unpacked"))
    if r.directory:
        path = files.host_path(r.directory.path)
        kind = files.kinds.get(path, "missing")
        at = "rootfs.directory.path"
        if kind != "dir":
            out.append(
                recipe.problem(at, f"{path!r} " + ("does not exist" if kind == "missing" else "is not a directory"))
            )
        elif (real := files.real.get(path, path)) != path and (bad := _bad_lower(real, facts)):
            out.append(recipe.problem(at, f"{path!r} is {real!r} (through a symlink), which {bad}"))
        elif bad := _bad_lower(path, facts):
            out.append(recipe.problem(at, f"{path!r} {bad}"))
        elif path == "/" or any(ch in path for ch in LAYER_BAD) or any(ch.isspace() for ch in path):
            out.append(
                recipe.problem(
                    at,
                    f"{path!r} cannot be an overlay layer: it must not be '/' or contain ',', ':', "
                    "quotes, backslashes or white space",
                )
            )
    return out


ETC_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def mount_problems(recipe: Recipe, facts: Facts) -> list[Problem]:
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(recipe.mounts):
        at = f"mounts[{i}]"

        def bad(key: str, message: str, at: str = at) -> None:
            out.append(recipe.problem(f"{at}.{key}", f"{at}.{key}: {message}"))

        if m.type == "tmpfs":
            if m.source is not None:
                bad("source", "a tmpfs has no source")
            if m.readonly:
                bad("readonly", "a read-only tmpfs would stay empty; use a read-only bind or volume")
        else:
            if m.size is not None or m.mode is not None:
                bad("size" if m.size is not None else "mode", f"size and mode are for tmpfs, not {m.type}")
            if m.source is None:
                out.append(recipe.problem(at, f"{at}: missing required key 'source' for a {m.type} mount"))
            elif m.type == "volume" and not VOLUME_RE.fullmatch(m.source):
                bad("source", f"{m.source!r} is not a volume name (letters, digits, '_', '.', '-'; at most 64)")
            elif m.type == "bind":
                path = facts.files.host_path(m.source)
                kind = facts.files.kinds.get(path, "missing")
                if kind == "missing":
                    bad("source", f"{path!r} does not exist on the host (ctrsh never creates a bind source)")
                elif kind == "other":
                    bad("source", f"{path!r} is neither a directory nor a regular file")
        if m.target in seen:
            bad("target", f"{m.target!r} is already the target of mounts[{seen[m.target]}]")
        seen.setdefault(m.target, i)
        if m.target in ETC_FILES or m.target == "/etc":
            bad("target", f"{m.target!r} is the container's own, made by ctrsh (see `dns:` for resolv.conf)")
        if problem := facts.files.target_problems.get(m.target):
            bad("target", problem)
    return out
