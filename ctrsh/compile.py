"""Compile a Recipe and host Facts into a Plan. Pure: no I/O, no side effects."""

from __future__ import annotations

from .errors import Problem, RecipeError
from .facts import Facts, Paths
from .phases import Context, cgroups, filesystem, namespaces, network, process, rootfs, security
from .plan import Plan
from .recipe import ALL_NAMESPACES, Recipe

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
    hostname: str | None = recipe.hostname or recipe.name
    if "uts" not in kinds:
        if recipe.hostname is not None:
            problems.append(
                recipe.problem("hostname", "setting a hostname needs the 'uts' namespace (else it renames the host)")
            )
        hostname = None
    problems += cgroups.check(recipe, facts)
    if problems:
        raise RecipeError(problems)
    return Context(recipe, facts, Paths(facts, recipe.name), kinds, hostname)


def compile_plan(recipe: Recipe, facts: Facts) -> Plan:
    ctx = resolve(recipe, facts)
    steps = tuple(step for module in PHASE_MODULES for step in module.steps(ctx))
    notes = tuple(note for module in PHASE_MODULES if hasattr(module, "notes") for note in module.notes(ctx))
    return Plan(
        name=recipe.name, source=printable(recipe.file), steps=steps, container_ns=ctx.paths.nsfile("mnt"), notes=notes
    )


def printable(text: str) -> str:
    """The recipe path goes into comments: a newline in a file name must not start a command line."""
    return "".join(c if c.isprintable() else "?" for c in text)
