"""The fixed PATH ctrsh runs its host tools with, as sudo's secure_path.

ctrsh runs as root: a `mkdir` planted early in the caller's PATH (a writable
~/bin, a `.` entry) must never run. Every step's program is looked up here,
and every step runs with PATH set to this, so the `sh -c` scripts' commands
are found here too.
"""

from __future__ import annotations

import os
import shutil

from .facts import SAFE_PATH as SAFE_PATH  # the one list, also used by the process phase


def resolve(program: str) -> str | None:
    """The program's full path: as given if it has a '/', else found on SAFE_PATH."""
    if "/" in program:
        return program
    return shutil.which(program, path=SAFE_PATH)


def environ() -> dict[str, str]:
    """The caller's environment with PATH replaced: what every step runs with."""
    return {**os.environ, "PATH": SAFE_PATH}
