"""Attack 2, the exported script: host paths that reach it outside shlex.quote.

Held so far (see attack2_notes.md): kept as a guard.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from .conftest import Ctrsh

EVIL_DIR = "d\ntouch PWNED\n#"  # no "/" in a file name: the planted command works in the cwd


def one_dir_tar(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("bin")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)


def test_a_newline_in_the_recipes_directory_stays_in_a_comment(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """HELD (a guard): recipe values may not hold a newline, and a relative host path is joined to
    the recipe's directory as compile.printable() cleans it ('?' for the newline), so the tarball
    is not found and nothing reaches a step's `why` (pasted raw after '# ' by export.py)."""
    where = tmp_path / EVIL_DIR
    where.mkdir()
    one_dir_tar(where / "img.tar")
    recipe = where / "recipe.yaml"
    recipe.write_text("name: test-a2-export\nrootfs: {tarball: {path: img.tar}}\nprocess:\n  args: [/bin/true]\n")
    r = ctrsh.run("export", str(recipe))
    if r.returncode == 2:
        return  # refused: fine
    assert r.returncode == 0, r.stderr
    planted = [line for line in r.stdout.splitlines() if line.startswith("touch PWNED")]
    script = tmp_path / "run.sh"
    script.write_text(r.stdout)
    subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert not (tmp_path / "PWNED").exists() and not planted, f"the exported script ran: {planted}"
