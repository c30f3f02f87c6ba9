"""Attack 2, volumes: what bind mounts let a container do to the host's files, and a host user to it.

Each test FAILS while the hole it names exists (see attack2_notes.md).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import Ctrsh
from .test_attack2_images import EUID_C, as_nobody, open_data  # noqa: F401  (fixture)


def bind_recipe(name: str, source: str, script: str) -> str:
    mounts = json.dumps([{"type": "bind", "source": source, "target": "/data"}])
    return f"name: {name}\nrootfs: {{busybox: {{}}}}\nmounts: {mounts}\nprocess:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"


@pytest.mark.xfail(
    strict=True, reason="known gap, as in Docker without userns-remap: root inside owns what it writes to a bind mount"
)
def test_container_root_cannot_plant_a_setuid_root_file_for_a_host_user(
    open_data: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """HIGH. No user namespace: the container's root is the host's uid 0, and bind mounts keep the
    host fs's setuid semantics. A user shares a dir with a container (a build dir, a web root);
    the container's root copies the user's program there and sets its setuid bit; on the host,
    the user runs it as root. (Docker without userns-remap has the same hole; ctrsh does not say so.)"""
    share = Path(open_data["CTRSH_DATA_DIR"]).parent / "share"
    share.mkdir(mode=0o755)
    src = tmp_path / "euid.c"
    src.write_text(EUID_C)
    subprocess.run(["gcc", "-o", str(share / "prog"), str(src)], check=True)
    os.chown(share, 65534, 65534)
    os.chown(share / "prog", 65534, 65534)
    ctrsh = Ctrsh(open_data, tmp_path)
    script = "cp /data/prog /data/p2 && chmod 4755 /data/p2"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(bind_recipe("test-a2-suidvol", str(share), script)))
    if r.returncode == 2:
        return
    if (share / "p2").exists():
        out = as_nobody(str(share / "p2"))
        assert "euid=0" not in out.stdout, "a host user became root through a file the container made"


@pytest.mark.xfail(
    strict=True, reason="known gap: a bind source is resolved when mounted (as Docker does), not pinned by an fd"
)
def test_a_bind_source_swapped_for_a_symlink_is_not_followed(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """MEDIUM. A bind source is checked with os.stat (follows links) and mounted by path: the
    owner of the source (or of any dir on its path) replaces it with a symlink to /etc, /root or
    the state dir between `ctrsh plan`/review and apply (or between gather() and the mount) and the
    container gets that dir read-write. Here the link is there from the start and still accepted."""
    secret = tmp_path / "host-etc"
    secret.mkdir()
    link = tmp_path / "share"
    os.symlink(secret, link)
    r = ctrsh.run("apply", "-q", ctrsh.recipe(bind_recipe("test-a2-symsrc", str(link), "touch /data/written")))
    assert r.returncode == 2 or not (secret / "written").exists(), "the mount followed a symlinked source"
