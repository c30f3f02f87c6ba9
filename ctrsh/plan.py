"""Step and Plan: the one data structure that apply, plan and export all read."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

Phase = Literal["rootfs", "namespaces", "filesystem", "network", "cgroups", "security", "process"]

# Phase order, each with the one-line purpose shown in `plan` and `export`.
PHASES: dict[Phase, str] = {
    "rootfs": "provide the root filesystem",
    "namespaces": "create the namespaces, persisted as files so each later step can enter them",
    "filesystem": "assemble the container's mounts inside its own mount namespace",
    "network": "configure the network namespace",
    "cgroups": "limit resources",
    "security": "drop privileges",
    "process": "start the container's PID 1",
}

Argv = tuple[str, ...]


def quote(arg: str) -> str:
    """shlex.quote, made safe for a human reading `plan`, the trace or `export`.

    A multi-line value (a script for `sh -c`) stays one '...' span over its
    lines, as a learner would write it. Any other character that is not
    printable (a carriage return, ESC, a bidi override: the recipe refuses
    them, this is the last line of defence) is written in bash's $'...' form,
    escaped, so it can neither move the cursor nor hide text.
    """
    if all(c.isprintable() or c in "\n\t" for c in arg):
        return shlex.quote(arg)
    out = []
    for c in arg:
        if c in "\\'":
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "$'" + "".join(out) + "'"


def join(argv: Argv) -> str:
    return " ".join(quote(a) for a in argv)


@dataclass(frozen=True)
class Step:
    """One real command. Never a string for a shell: `argv` is passed as is."""

    phase: Phase
    argv: Argv
    why: str
    undo: Argv | None = None  # the command that reverses this step on the host
    creates: str | None = None  # skip the step when this path exists
    keep: bool = False  # with creates: the result is kept for reuse (an image); once made, its undos lapse
    foreground: bool = False  # the container itself: user's terminal, its exit code is ours
    progress: bool = False  # long-running (an image build): its own output is shown live on stderr

    @property
    def command(self) -> str:
        return join(self.argv)

    @property
    def undo_command(self) -> str | None:
        return join(self.undo) if self.undo else None


@dataclass(frozen=True)
class Plan:
    name: str
    source: str  # the recipe file, for headers
    steps: tuple[Step, ...]
    container_ns: str = ""  # the mount namespace file: the container's processes are those in it
    terminal: bool = False  # the container has a pty of its own (else its output is relayed off a terminal)
    notes: tuple[str, ...] = ()  # what the plan does not do and why (no fake steps for it), shown as comments
    command: tuple[str, ...] = ()  # the container's process.args (for `ctrsh ps`)
    oom_counter: str = ""  # its cgroup's OOM-kill counter ("" without a memory cgroup): the exported script reads it
    lock: str = ""  # the name's lock file (lock.py): the exported script takes it as apply does

    def by_phase(self) -> list[tuple[Phase, list[Step]]]:
        """Steps grouped by phase, in phase order, skipping empty phases."""
        groups: list[tuple[Phase, list[Step]]] = []
        for step in self.steps:
            if not groups or groups[-1][0] != step.phase:
                groups.append((step.phase, []))
            groups[-1][1].append(step)
        return groups
