"""Attack 2, `directory` rootfs: what the check on its path lets through.

Each test FAILS while the hole it names exists (see attack2_notes.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .conftest import Ctrsh


def recipe(name: str, path: str) -> str:
    rootfs = json.dumps({"directory": {"path": path}})
    return f"name: {name}\nrootfs: {rootfs}\nprocess:\n  args: [/bin/sh, -c, 'true']\n"


def test_a_symlink_to_slash_is_refused_as_slash_is(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """MEDIUM. compile.image_problems refuses the path '/', compared as text after normpath; a
    symlink to / (or /proc/1/root, or a bind mount of /) passes, and the container's root is the
    host's whole tree (read-only, but with /root, /etc/shadow, every user's files)."""
    link = tmp_path / "root-link"
    os.symlink("/", link)
    r = ctrsh.run("plan", ctrsh.recipe(recipe("test-a2-slash", str(link))))
    assert r.returncode == 2, "a directory rootfs that IS the host's / was accepted"


def test_a_directory_holding_the_data_dir_is_refused(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """MEDIUM. A directory rootfs that contains ctrsh's data (or state) dir puts every image,
    named volume and running container's writable layer (DATA/containers, 0700 but the container
    is root with dac_override) inside this container's root."""
    data = Path(ctrsh.env["CTRSH_DATA_DIR"])
    parent = str(data.parent)
    r = ctrsh.run("plan", ctrsh.recipe(recipe("test-a2-holds-data", parent)))
    assert r.returncode == 2, f"{parent} holds the data dir {data} and was accepted as a rootfs"
