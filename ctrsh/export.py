"""Plan -> a standalone bash script that does what `ctrsh apply` does.

Undos are registered as each step succeeds and run, newest first, by an EXIT
trap: on success, on a failing step (set -e), and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import shlex
from itertools import groupby

from . import __version__
from .plan import PHASES, Plan

HEADER = """\
#!/usr/bin/env bash
# Container "{name}", exported by ctrsh {version} from {source}.
# It runs the same commands as `ctrsh apply {source}`, with plain bash.
# Run it as root. Everything it changes on the host is undone when it exits,
# fails or is interrupted: each step that changes the host registers its undo.
# shellcheck disable=SC2016  # '$1' in single quotes is for the inner sh, by design
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
  echo "$0: run this as root, e.g. sudo bash $0" >&2
  exit 1
fi

undo=()  # commands that reverse what has run, oldest first
cleanup() {{
  local rc=$? i
  trap - EXIT
  trap '' INT TERM HUP  # a teardown cut short would leave the host half-changed
  for ((i = ${{#undo[@]}} - 1; i >= 0; i--)); do
    eval "${{undo[i]}}" || echo "$0: undo failed: ${{undo[i]}}" >&2
  done
  exit "$rc"
}}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
"""


def export_script(plan: Plan) -> str:
    out = [HEADER.format(name=plan.name, version=__version__, source=plan.source)]
    for phase, steps in plan.by_phase():
        out.append(f"\n# == {phase}: {PHASES[phase]} ==\n")
        for (creates, keep), grouped in groupby(steps, key=lambda s: (s.creates, s.keep)):
            group = list(grouped)
            indent = "  " if creates else ""
            if creates:
                path = shlex.quote(creates)
                out.append(f"if [[ ! -e {path} && ! -L {path} ]]; then  # only if missing\n")
                if keep:
                    out.append("  n=${#undo[@]}\n")
            for step in group:
                out.append(f"{indent}# {step.why}\n{indent}{step.command}\n")
                if step.undo_command:
                    out.append(f"{indent}undo+=({shlex.quote(step.undo_command)})\n")
            if keep:
                out.append('  undo=("${undo[@]:0:n}")  # made and kept: its clean-up undos lapse\n')
            if creates:
                out.append("fi\n")
    out.append("\n# The EXIT trap now tears everything down: the undos above, newest first.\n")
    return "".join(out)
