"""The journal: undos of what has run, on disk, so `ctrsh destroy` can finish the job after a crash."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .plan import Argv, Step


@dataclass
class Journal:
    path: str
    entries: list[tuple[Argv, Step | None]] = field(default_factory=list)  # (undo, the step it undoes)

    @property
    def undos(self) -> list[Argv]:
        return [undo for undo, _ in self.entries]

    def record(self, step: Step) -> None:
        if step.undo:
            self.entries.append((step.undo, step))
        if step.keep and step.creates and os.path.lexists(step.creates):
            # A kept result is complete: the undos that cleaned up a half-made one are moot.
            self.entries = [e for e in self.entries if not (e[1] and e[1].creates == step.creates)]
        self.save()

    def forget(self, undo: Argv) -> None:
        """An undo has run: drop it, so a later `ctrsh destroy` does not run it again."""
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i][0] == undo:
                del self.entries[i]
                break
        self.save()

    def save(self) -> None:
        # The journal lives in the container's state dir, which a step creates;
        # until then it is kept in memory only (rollback still has it).
        if os.path.isdir(os.path.dirname(self.path)):
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"undo": self.undos}, f)
            os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: str) -> Journal:
        with open(path) as f:
            return cls(path, [(tuple(u), None) for u in json.load(f)["undo"]])
