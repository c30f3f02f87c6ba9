"""Attack 2, the image cache: `rmi` while an image is in use.

Each test FAILS while the hole it names exists (see attack2_notes.md).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .conftest import ROOT, Ctrsh
from .test_attack2_images import open_data  # noqa: F401  (fixture)

WAIT = "while [ ! -e /data/go ]; do sleep 0.1; done; if read l </etc/passwd; then echo still-there; else echo image-gone; fi"


def test_rmi_from_another_state_dir_refuses_an_image_in_use(open_data: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """MEDIUM. images.users() looks only in rmi's own state dir for containers using an image, but
    the data dir (the image cache) is shared by instances with different state dirs (the test suite
    itself shares its Debian cache so). `rmi` from another state dir removes the lower layer of a
    running container: files it has not opened yet vanish (and the same follows from the window
    between the overlay mount and rootfs.record_image, which apply runs without the image's lock)."""
    share = tmp_path / "share"
    share.mkdir()
    mounts = json.dumps([{"type": "bind", "source": str(share), "target": "/data"}])
    text = (
        f"name: test-a2-rmi\nrootfs: {{busybox: {{}}}}\nmounts: {mounts}\n"
        f"process:\n  args: [/bin/sh, -c, {json.dumps(WAIT)}]\n"
    )
    ctrsh = Ctrsh(open_data, tmp_path)
    proc = subprocess.Popen(
        ctrsh.cmd("apply", "-q", ctrsh.recipe(text)), env=ctrsh.env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        state = Path(open_data["CTRSH_STATE_DIR"]) / "test-a2-rmi" / "image"
        for _ in range(600):  # until the container has recorded its image (bounds the wait only)
            if state.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        other = {**open_data, "CTRSH_STATE_DIR": open_data["CTRSH_STATE_DIR"] + "-other"}
        rmi = Ctrsh(other, tmp_path).run("rmi", "busybox")
    finally:
        (share / "go").touch()
        out, _err = proc.communicate(timeout=60)
    assert rmi.returncode != 0, f"rmi removed an image in use; the container then said: {out.strip()!r}"
