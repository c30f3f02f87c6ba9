"""Errors ctrsh reports to users, each with the exit code it maps to."""

from __future__ import annotations

from dataclasses import dataclass


class CtrshError(Exception):
    """An error with a one-line message for the user; `exit_code` is what ctrsh exits with."""

    exit_code = 1
    reported = False  # already shown to the user where it happened


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a recipe, at a 1-based line and column."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class RecipeError(CtrshError):
    """The recipe is invalid; nothing has been run."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.col))
        super().__init__("\n".join(map(str, self.problems)))


class UsageError(CtrshError):
    """The command line or the environment is wrong (not root, missing tool, bad option)."""

    exit_code = 2


class StepFailed(CtrshError):
    """A step's command failed while applying; what ran was rolled back.

    125 follows `docker run`: the runtime failed, not the container.
    """

    exit_code = 125
