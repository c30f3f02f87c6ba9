"""The journal: undos of what has run, on disk, so `ctrsh destroy` can finish the job after a crash.

An undo is journaled *before* its step runs (`intend`), and marked done after
(`done`): a kill -9 in between leaves it in the journal, so `destroy` still
undoes what the step may have done. Undoing what never happened must then be
harmless: an undo whose step may not have taken effect (the one in flight, or
a shared step another container made) is "unsure", and its failure is not an
error — there was nothing to undo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .plan import Argv, Step


@dataclass
class Journal:
    path: str
    entries: list[tuple[Argv, Step | None]] = field(default_factory=list)  # (undo, the step it undoes)
    unsure: list[Argv] = field(default_factory=list)  # undos whose step may not have happened

    @property
    def undos(self) -> list[Argv]:
        return [undo for undo, _ in self.entries]

    def intend(self, step: Step) -> None:
        """Before a step runs: journal its undo, as unsure until the step is done."""
        if step.undo:
            self.entries.append((step.undo, step))
            self.unsure.append(step.undo)
            self.save()

    def done(self, step: Step) -> None:
        """The step ran: its undo is needed for sure."""
        changed = False
        if step.undo and step.undo in self.unsure:
            self.unsure.remove(step.undo)
            changed = True
        if step.keep and step.creates and os.path.lexists(step.creates):
            # A kept result is complete: the undos that cleaned up a half-made one are moot.
            kept = [e for e in self.entries if not (e[1] and e[1].creates == step.creates)]
            changed = changed or kept != self.entries
            self.entries = kept
        if changed:  # a step without an undo changes nothing here: no write (half of them, for hello)
            self.save()

    def failed(self, step: Step) -> None:
        """The step failed and reported it: it did not take effect, and its undo could hit what is
        not ours (`ip netns add` failed because the name exists)."""
        if step.undo and step.undo in self.unsure:
            self.unsure.remove(step.undo)
            for i in range(len(self.entries) - 1, -1, -1):
                if self.entries[i][0] == step.undo:
                    del self.entries[i]
                    break
            self.save()

    def record(self, step: Step) -> None:
        """intend + done, for a step that has run."""
        self.intend(step)
        self.done(step)

    def shared(self, step: Step) -> None:
        """A step skipped because its result exists (made by another container, say), whose undo is
        safe to try anyway (removing the state dir once empty): journaled as unsure."""
        if step.undo and not step.keep:
            self.entries.append((step.undo, step))
            self.unsure.append(step.undo)
            self.save()

    def forget(self, undo: Argv) -> None:
        """An undo has run: drop it, so a later `ctrsh destroy` does not run it again."""
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i][0] == undo:
                del self.entries[i]
                break
        if undo in self.unsure and undo not in self.undos:
            self.unsure.remove(undo)
        self.save()

    def is_unsure(self, undo: Argv) -> bool:
        return undo in self.unsure

    def save(self) -> None:
        # The journal lives in the container's state dir, which a step creates;
        # until then it is kept in memory only (rollback still has it).
        if os.path.isdir(os.path.dirname(self.path)):
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"undo": self.undos, "unsure": self.unsure}, f)
            os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: str) -> Journal:
        with open(path) as f:
            data = json.load(f)
        return cls(path, [(tuple(u), None) for u in data["undo"]], [tuple(u) for u in data.get("unsure", [])])
