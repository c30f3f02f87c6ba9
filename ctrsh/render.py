"""Plan -> text for `ctrsh plan`: the commands, phase by phase, each with its why.

The output is itself valid shell (notes are comments), like the trace and the
export, so a learner can copy any part of it.
"""

from __future__ import annotations

from itertools import groupby

from .plan import PHASES, Plan


def render_plan(plan: Plan) -> str:
    lines = [
        f'# ctrsh plan: container "{plan.name}" from {plan.source}: {len(plan.steps)} steps. Nothing has been run.',
        "# `ctrsh apply` runs these in order; if one fails, the undos of those before it run in reverse.",
        *(f"# Note: {note}" for note in plan.notes),
    ]
    number = {id(step): i for i, step in enumerate(plan.steps, 1)}  # as "step K of N failed" counts them
    for phase, steps in plan.by_phase():
        lines += ["", f"# == {phase}: {PHASES[phase]} =="]
        for (creates, keep), group in groupby(steps, key=lambda s: (s.creates, s.keep)):
            if creates:
                kept = ", and kept for reuse" if keep else ""
                lines.append(f"# (only if {creates} is missing{kept})")
            for step in group:
                lines.append(f"# {number[id(step)]}. {step.why}")
                if step.undo_command:
                    lines.append(f"#   undo: {commented(step.undo_command)}")
                lines.append(step.command)
    # undos of kept results only clean up a build cut short, so they are not part of the teardown
    undos = [s.undo_command for s in reversed(plan.steps) if s.undo_command and not s.keep]
    lines += ["", "# == teardown: when the container exits, undo in reverse =="]
    lines += [f"#   {commented(u)}" for u in undos]
    return "\n".join(lines) + "\n"


def commented(command: str) -> str:
    """A multi-line command (a script for `sh -c`) stays inside its comment."""
    return command.replace("\n", "\n#     ")
