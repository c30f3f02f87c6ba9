"""Attack 2, images: a hostile tarball against the entry checks and the image cache on the host.

Each test FAILS while the hole it names exists (see attack2_notes.md).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Ctrsh

BUSYBOX = shutil.which("busybox", path="/usr/bin:/bin") or "/bin/busybox"
EUID_C = '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("euid=%d\\n", (int)geteuid());return 0;}\n'


def recipe(name: str, tar: Path) -> str:
    rootfs = json.dumps({"tarball": {"path": str(tar)}})
    return f"name: {name}\nrootfs: {rootfs}\nprocess:\n  args: [/bin/sh, -c, 'true']\n"


def info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.mode, i.uid, i.gid = kind, 0o755, 0, 0
    for k, v in kw.items():
        setattr(i, k, v)
    return i


def busybox_members(tar: tarfile.TarFile) -> None:
    """Enough of an image for `/bin/sh -c true` to run."""
    tar.addfile(info("bin", tarfile.DIRTYPE))
    data = Path(BUSYBOX).read_bytes()
    tar.addfile(info("bin/busybox", size=len(data)), io.BytesIO(data))
    tar.addfile(info("bin/sh", tarfile.SYMTYPE, linkname="busybox"))
    tar.addfile(info("bin/true", tarfile.SYMTYPE, linkname="busybox"))


@pytest.fixture
def open_data(tmp_path: Path) -> Iterator[dict[str, str]]:
    """State and data dirs under a world-traversable parent, as /var/lib is (0755) for /var/lib/ctrsh."""
    parent = tempfile.mkdtemp(prefix="ctrsh-attack2-", dir="/tmp")
    os.chmod(parent, 0o755)
    try:
        yield {"CTRSH_STATE_DIR": f"{parent}/run", "CTRSH_DATA_DIR": f"{parent}/data"}
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", parent], check=False)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # through sh: setpriv's own exec of the path is not checked as the user it switched to
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", '"$0" "$@"', *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_tarball_setuid_root_file_is_not_runnable_by_a_host_user(open_data: dict[str, str], tmp_path: Path) -> None:
    """CRITICAL. The image cache is world-traversable (DATA and DATA/images are made with the umask,
    0755) and tar unpacks with --same-owner --same-permissions: a setuid-root file in a hostile
    tarball becomes a setuid-root file on the HOST that any local user can run."""
    src = tmp_path / "euid.c"
    src.write_text(EUID_C)
    helper = tmp_path / "euid"
    subprocess.run(["gcc", "-o", str(helper), str(src)], check=True)
    tar_path = tmp_path / "suid.tar"
    with tarfile.open(tar_path, "w") as tar:
        busybox_members(tar)
        data = helper.read_bytes()
        tar.addfile(info("bin/euid", size=len(data), mode=0o4755), io.BytesIO(data))
    ctrsh = Ctrsh(open_data, tmp_path)
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a2-suid", tar_path)))
    if r.returncode == 2:
        return  # refused up front: fine
    images = Path(open_data["CTRSH_DATA_DIR"]) / "images"
    planted = [p for p in images.glob("tarball-*/bin/euid")]
    assert planted, r.stderr
    out = as_nobody(str(planted[0]))
    assert "euid=0" not in out.stdout, f"a host user ran the image's setuid file as root: {planted[0]}"


def test_tarball_device_node_is_not_openable_by_a_host_user(open_data: dict[str, str], tmp_path: Path) -> None:
    """CRITICAL. Device nodes under dev/ are allowed in a tarball; unpacked in the 0755 cache they are
    real nodes on the host: a local user opens the host's block device (here: read 512 bytes)."""
    block = next((p for p in sorted(Path("/dev").iterdir()) if p.is_block_device()), None)
    if block is None:
        pytest.skip("no block device on this host")
    rdev = os.stat(block).st_rdev
    tar_path = tmp_path / "dev.tar"
    with tarfile.open(tar_path, "w") as tar:
        busybox_members(tar)
        tar.addfile(info("dev", tarfile.DIRTYPE))
        tar.addfile(info("dev/disk", tarfile.BLKTYPE, mode=0o666, devmajor=os.major(rdev), devminor=os.minor(rdev)))
    ctrsh = Ctrsh(open_data, tmp_path)
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a2-dev", tar_path)))
    if r.returncode == 2:
        return
    nodes = list((Path(open_data["CTRSH_DATA_DIR"]) / "images").glob("tarball-*/dev/disk"))
    assert nodes, r.stderr
    out = as_nobody("dd", f"if={nodes[0]}", "of=/dev/null", "bs=512", "count=1")
    assert out.returncode != 0, f"a host user read {block} through the image's node {nodes[0]}"


def plain_tar(members: list[tarfile.TarInfo], end: bool) -> bytes:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            tar.addfile(m)
    data = b.getvalue()
    if not end:  # no end-of-archive blocks: the next gzip member carries on the same archive
        data = data.rstrip(b"\0")
        data += b"\0" * (-len(data) % 512)
    return data


def images_devices(data: str) -> list[str]:
    """Device nodes outside an image's dev/ in the cache."""
    out = []
    for top, dirs, files in os.walk(f"{data}/images"):
        for f in files + dirs:
            p = os.path.join(top, f)
            rel = os.path.relpath(p, f"{data}/images").split("/", 1)[-1]
            st = os.lstat(p)
            if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and not rel.startswith("dev/"):
                out.append(p)
    return out


def test_second_gzip_member_is_checked(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """HIGH. hostfiles._scan reads a .tar.gz with Python's tarfile, which stops at the end of the
    first gzip member; GNU tar (gzip -d) unpacks every member. Entries after the first member are
    never checked: here a device node outside /dev, which the checker refuses in a one-member file."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as tar:
        busybox_members(tar)
    first = b.getvalue().rstrip(b"\0")
    first += b"\0" * (-len(first) % 512)
    second = plain_tar([info("bin/mem", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=1)], end=True)
    tar_path = tmp_path / "two.tar.gz"
    tar_path.write_bytes(gzip.compress(first) + gzip.compress(second))
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a2-gz", tar_path)))
    found = images_devices(ctrsh.env["CTRSH_DATA_DIR"])
    for p in found:
        subprocess.run(["rm", "-rf", "--one-file-system", str(Path(p).parents[1])], check=False)
    assert r.returncode == 2 and not found, f"unchecked entries unpacked: {found}"


def test_hardlink_to_a_dev_node_is_a_device_outside_dev(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """HIGH. check_members allows device nodes under dev/ and hardlinks to any in-image path: a
    hardlink 'mem' -> 'dev/mem' is a device node outside /dev (ischr() is False for a LNKTYPE)."""
    tar_path = tmp_path / "hl.tar"
    with tarfile.open(tar_path, "w") as tar:
        busybox_members(tar)
        tar.addfile(info("dev", tarfile.DIRTYPE))
        tar.addfile(info("dev/mem", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=1))
        tar.addfile(info("bin/mem", tarfile.LNKTYPE, linkname="dev/mem"))
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a2-hl", tar_path)))
    found = images_devices(ctrsh.env["CTRSH_DATA_DIR"])
    for p in found:
        subprocess.run(["rm", "-rf", "--one-file-system", str(Path(p).parents[1])], check=False)
    assert r.returncode == 2 and not found, f"a device node outside /dev: {found}"
