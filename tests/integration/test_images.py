"""Images, copy-on-write, volumes and /etc files, checked from inside real containers."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh

# The Debian image is downloaded once and kept here across test runs (keyed by its parameters,
# like any ctrsh image): CI builds it once, later runs reuse it.
DEBIAN_CACHE = os.environ.get("CTRSH_TEST_CACHE", "/var/cache/ctrsh-test")

DEVICES = r"""
echo "urandom=$(head -c 4 /dev/urandom | wc -c)"
echo > /dev/null && echo null=ok
if echo > /dev/full 2>/dev/null; then echo full=wrote; else echo full=failed; fi
"""


def recipe(name: str, rootfs: str, script: str, extra: str = "") -> str:
    return f"name: {name}\nrootfs: {rootfs}\n{extra}process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"


def busybox_image(ctrsh: Ctrsh) -> Path:
    """The session's busybox image, built if this is the first test to need it."""
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-bb-build", "{busybox: {}}", "true"), "bb.yaml"))
    assert r.returncode == 0, r.stderr
    return Path(ctrsh.env["CTRSH_DATA_DIR"]) / "images" / "busybox"


def make_tarball(src: Path, dest: Path) -> Path:
    subprocess.run(["tar", "-C", str(src), "-caf", str(dest), "."], check=True)
    return dest


@pytest.fixture(scope="session")
def debian_data(dirs: dict[str, str]) -> str:
    """A data dir holding the bookworm minbase image, built on first use (the download needs the
    host's network: scripts/sandbox passes a handle on it) and shared by every test and run."""
    data = f"{DEBIAN_CACHE}/data"
    env = {**os.environ, "CTRSH_DATA_DIR": data, "CTRSH_STATE_DIR": dirs["CTRSH_STATE_DIR"]}
    text = (ROOT / "recipes/debian.yaml").read_text().replace("name: debian", "name: test-debian-build")
    path = Path(dirs["CTRSH_STATE_DIR"]).parent / "debian-build.yaml"
    path.write_text(text)
    cmd = [sys.executable, "-m", "ctrsh", "apply", str(path)]
    fd = os.environ.get("CTRSH_HOST_NETNS_FD")
    if fd:  # in scripts/sandbox: download through the host's network namespace
        cmd = ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *cmd]
    fds = (int(fd),) if fd else ()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, pass_fds=fds)
    assert r.returncode == 0, r.stderr[-3000:]
    return data


@pytest.fixture
def debian(debian_data: str, dirs: dict[str, str], tmp_path: Path) -> Iterator[Ctrsh]:
    c = Ctrsh({**dirs, "CTRSH_DATA_DIR": debian_data}, tmp_path)
    yield c
    assert os.listdir(f"{debian_data}/containers") == []  # no writable layer left in the shared cache


KINDS = ["busybox", "tarball", "directory", "debian"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, ctrsh: Ctrsh, tmp_path: Path) -> tuple[Ctrsh, str]:
    """(the ctrsh to use, the rootfs section) for each image kind."""
    if request.param == "debian":
        return request.getfixturevalue("debian"), "{debootstrap: {suite: bookworm}}"
    if request.param == "busybox":
        return ctrsh, "{busybox: {}}"
    image = busybox_image(ctrsh)
    if request.param == "tarball":
        tar = make_tarball(image, tmp_path / "rootfs.tar.gz")
        return ctrsh, json.dumps({"tarball": {"path": str(tar)}})
    copy = tmp_path / "rootdir"
    subprocess.run(["cp", "-a", str(image), str(copy)], check=True)
    return ctrsh, json.dumps({"directory": {"path": str(copy)}})


def test_devices_in_every_image_kind(kind: tuple[Ctrsh, str]) -> None:
    c, rootfs = kind
    r = c.run("apply", "-q", c.recipe(recipe("test-devices", rootfs, DEVICES)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["urandom=4", "null=ok", "full=failed"]


def test_etc_files_name_the_container(kind: tuple[Ctrsh, str]) -> None:
    c, rootfs = kind
    script = "cat /etc/hostname; cat /etc/hosts; echo ==; cat /etc/resolv.conf; stat -c %a /etc/hosts"
    r = c.run("apply", "-q", c.recipe(recipe("test-etc", rootfs, script, "hostname: box.example\n")))
    assert r.returncode == 0, r.stderr
    hosts, resolv = r.stdout.split("==\n")
    assert hosts.splitlines() == [
        "box.example",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "127.0.1.1\tbox.example box",
    ]
    assert resolv.splitlines()[-1] == "644"
    assert not any(line.split()[:2] == ["nameserver", "127.0.0.1"] for line in resolv.splitlines())


def test_dns_override(ctrsh: Ctrsh) -> None:
    r = ctrsh.run(
        "apply",
        "-q",
        ctrsh.recipe(recipe("test-dns", "{busybox: {}}", "cat /etc/resolv.conf", "dns: [192.0.2.1, '2001:db8::1']\n")),
    )
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("nameserver")] == [
        "nameserver 192.0.2.1",
        "nameserver 2001:db8::1",
    ]


def test_debian_recipe_runs_apt(debian: Ctrsh) -> None:
    text = (ROOT / "recipes/debian.yaml").read_text().replace("name: debian", "name: test-debian")
    r = debian.run("apply", debian.recipe(text))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "Debian GNU/Linux 12 (bookworm)"
    assert r.stdout.splitlines()[1].startswith("apt 2.")
    assert "exists, skipping the steps that make it" in r.stderr  # the cached image: nothing downloaded


def test_writes_land_only_in_the_upper_layer(kind: tuple[Ctrsh, str], tmp_path: Path) -> None:
    c, rootfs = kind
    # A writes (a new file, a changed one, a removed one) and waits; B, started meanwhile from the same
    # image, must see none of it, and neither must the image.
    a_script = "echo a > /new; echo changed >> /etc/passwd; rm /etc/group; echo ready; read x; echo done"
    a = subprocess.Popen(
        c.cmd("apply", "-q", c.recipe(recipe("test-cow-a", rootfs, a_script), "a.yaml")),
        env=c.env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert a.stdout is not None and a.stdin is not None
    try:
        assert a.stdout.readline() == "ready\n"
        b_script = "[ -e /new ] && echo new; grep -c changed /etc/passwd; [ -e /etc/group ] && echo group"
        r = c.run("apply", "-q", c.recipe(recipe("test-cow-b", rootfs, b_script), "b.yaml"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["0", "group"]
        data = Path(c.env["CTRSH_DATA_DIR"])
        upper = data / "containers" / "test-cow-a" / "upper"
        assert (upper / "new").read_text() == "a\n"  # A's writes are in A's upper layer
        # published images only: a build in progress (NAME.tmp-CONTAINER, another run's) is not one yet
        images = [p for p in (data / "images").iterdir() if p.is_dir() and ".tmp-" not in p.name]
        lowers = [*images, Path(json.loads(rootfs)["directory"]["path"])] if "directory" in rootfs else images
        for image in lowers:
            assert not (image / "new").exists()
            assert "changed" not in (image / "etc" / "passwd").read_text()
            assert (image / "etc" / "group").exists()
    finally:
        a.communicate("go\n", timeout=60)
    assert a.returncode == 0


def test_readonly_root(kind: tuple[Ctrsh, str]) -> None:
    c, rootfs = kind
    r = c.run("apply", "-q", c.recipe(recipe("test-ro", rootfs, "touch /x; echo $?", "readonly: true\n")))
    assert r.returncode == 0, r.stderr
    assert "Read-only file system" in r.stderr and r.stdout == "1\n"


def test_named_volume_survives_destroy_and_reapply(ctrsh: Ctrsh) -> None:
    vol = Path(ctrsh.env["CTRSH_DATA_DIR"]) / "volumes" / "test-vol"
    extra = "mounts:\n  - {type: volume, source: test-vol, target: /data}\n"
    script = "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n + 1)) > /data/n; cat /data/n"
    path = ctrsh.recipe(recipe("test-vol", "{busybox: {}}", script, extra))
    try:
        assert ctrsh.run("apply", "-q", path).stdout == "1\n"
        # Killed ctrsh, then destroy: the volume stays.
        proc = subprocess.Popen(
            ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-vol", "{busybox: {}}", "cat /data/n; exec sleep 60", extra), "k.yaml")),
            env=ctrsh.env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == "1\n"
        proc.kill()
        proc.wait()
        d = ctrsh.run("destroy", "test-vol")
        assert d.returncode == 0, d.stderr
        assert (vol / "n").read_text() == "1\n"
        assert ctrsh.run("apply", "-q", path).stdout == "2\n"
        listed = ctrsh.run("volumes").stdout
        assert "test-vol" in listed
    finally:
        shutil.rmtree(vol, ignore_errors=True)  # the test's own volume; ctrsh keeps volumes by design


def test_bind_and_tmpfs_mounts(ctrsh: Ctrsh, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("host\n")
    extra = (
        f"mounts:\n  - {{type: bind, source: {rw}, target: /rw}}\n"
        f"  - {{type: bind, source: {ro}, target: /srv/ro, readonly: true}}\n"
        "  - {type: tmpfs, target: /scratch, size: 8M, mode: '1777'}\n"
    )
    script = (
        "echo from-container > /rw/out; cat /srv/ro/f; echo x > /srv/ro/f 2>/dev/null || echo ro-refused; "
        "stat -c %a /scratch; awk '$2==\"/scratch\"{print $3, $4}' /proc/mounts"
    )
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-binds", "{busybox: {}}", script, extra)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["host", "ro-refused", "1777"]
    assert lines[3].startswith("tmpfs rw,nosuid,nodev,") and "size=8192k" in lines[3]
    assert (rw / "out").read_text() == "from-container\n"
    assert (ro / "f").read_text() == "host\n"


def test_mount_point_parents_keep_the_images_modes(kind: tuple[Ctrsh, str]) -> None:
    """/tmp/x as a target makes /tmp in the upper layer: it must stay 1777 as in the image."""
    c, rootfs = kind
    extra = "mounts:\n  - {type: tmpfs, target: /tmp/x/y}\n"
    r = c.run("apply", "-q", c.recipe(recipe("test-parents", rootfs, "stat -c '%n %a' /tmp /tmp/x /tmp/x/y", extra)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["/tmp 1777", "/tmp/x 755", "/tmp/x/y 1777"]


def test_volumes_recipe(ctrsh: Ctrsh) -> None:
    text = (ROOT / "recipes/volumes.yaml").read_text().replace("name: volumes", "name: test-volumes")
    path = ROOT / "recipes" / ".test-volumes.yaml"  # beside the shipped one: its bind source is `.`
    path.write_text(text.replace("volumes-demo", "test-volumes-demo"))
    vol = Path(ctrsh.env["CTRSH_DATA_DIR"]) / "volumes" / "test-volumes-demo"
    try:
        r = ctrsh.run("apply", "-q", str(path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("run 1 of this named volume\n")
        assert "Read-only file system" in r.stdout
        assert ctrsh.run("apply", "-q", str(path)).stdout.startswith("run 2 ")
    finally:
        path.unlink()
        shutil.rmtree(vol, ignore_errors=True)


def evil_dir(tmp_path: Path, ctrsh: Ctrsh) -> Path:
    """A directory image whose /evil is a symlink to a host dir, /up climbs out with .., and /ok stays in."""
    image = tmp_path / "evil-root"
    subprocess.run(["cp", "-a", str(busybox_image(ctrsh)), str(image)], check=True)
    (tmp_path / "hostdir").mkdir()
    (image / "evil").symlink_to(tmp_path / "hostdir")
    (image / "up").symlink_to("../../../../../../../../" + str(tmp_path / "hostdir").lstrip("/"))
    (image / "ok").symlink_to("tmp")
    return image


@pytest.mark.parametrize("target", ["/evil", "/evil/sub", "/up/sub"])
def test_symlinked_volume_target_is_refused(ctrsh: Ctrsh, tmp_path: Path, target: str) -> None:
    image = evil_dir(tmp_path, ctrsh)
    rootfs = json.dumps({"directory": {"path": str(image)}})
    extra = f"mounts:\n  - {{type: tmpfs, target: {target}}}\n"
    path = ctrsh.recipe(recipe("test-evil", rootfs, "touch /evil/pwned /up/pwned", extra))
    r = ctrsh.run("apply", path)
    assert r.returncode == 2
    assert "which points outside the image; mounting there would land on the host" in r.stderr
    assert r.stderr.startswith(f"{path}:4:27: mounts[0].target: '{target}' goes through the image's symlink /")
    assert not Path(ctrsh.env["CTRSH_STATE_DIR"], "test-evil").exists()  # nothing ran
    assert os.listdir(tmp_path / "hostdir") == []


def test_symlink_inside_the_image_is_a_fine_target(ctrsh: Ctrsh, tmp_path: Path) -> None:
    image = evil_dir(tmp_path, ctrsh)
    rootfs = json.dumps({"directory": {"path": str(image)}})
    extra = "mounts:\n  - {type: tmpfs, target: /ok/sub}\n"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-ok", rootfs, "awk '{print $2}' /proc/mounts", extra)))
    assert r.returncode == 0, r.stderr
    assert "/ok/sub" in r.stdout.split()


def test_image_symlink_never_redirects_a_mount(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """A tarball image (not yet built, so not checked before compiling) whose /mnt links to a host dir:
    the mount must still land inside the container."""
    src = tmp_path / "src"
    subprocess.run(["cp", "-a", str(busybox_image(ctrsh)), str(src)], check=True)
    host = tmp_path / "hostdir"
    host.mkdir()
    (src / "mnt").symlink_to(host)
    tar = make_tarball(src, tmp_path / "evil.tar.gz")
    extra = "mounts:\n  - {type: tmpfs, target: /mnt/x}\n"
    r = ctrsh.run(
        "apply",
        "-q",
        ctrsh.recipe(recipe("test-redirect", json.dumps({"tarball": {"path": str(tar)}}), "touch /mnt/x/f", extra)),
    )
    assert r.returncode == 0, r.stderr
    assert os.listdir(host) == []
    r = ctrsh.run(
        "apply", "-q", ctrsh.recipe(recipe("test-redirect", json.dumps({"tarball": {"path": str(tar)}}), "true", extra))
    )
    assert r.returncode == 2 and "points outside the image" in r.stderr  # now the image exists: refused up front


def tar_with(path: Path, members: list[tuple[str, str]]) -> Path:
    """A tar of (name, kind[:link target]) entries, made with tarfile: GNU tar would not write some."""
    with tarfile.open(path, "w") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind.startswith("sym:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind[4:]
                tar.addfile(info)
            elif kind.startswith("hard:"):
                info.type, info.linkname = tarfile.LNKTYPE, kind[5:]
                tar.addfile(info)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = b"pwned\n"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


EVIL_TARS = {
    "dotdot": ([("bin", "dir"), ("../../../../../../../tmp/ctrsh-pwned", "file")], "contains '..'"),
    "absolute": ([("/tmp/ctrsh-pwned", "file")], "has an absolute path"),
    "through-symlink": ([("a", "sym:/tmp"), ("a/ctrsh-pwned", "file")], "goes through the symlink 'a'"),
    "hardlink-out": ([("h", "hard:/etc/shadow")], "points outside the image"),
}


@pytest.mark.parametrize("case", list(EVIL_TARS))
def test_tarball_escape_is_refused(ctrsh: Ctrsh, tmp_path: Path, case: str) -> None:
    members, message = EVIL_TARS[case]
    tar = tar_with(tmp_path / "evil.tar", members)
    path = ctrsh.recipe(recipe("test-evil-tar", json.dumps({"tarball": {"path": str(tar)}}), "true"))
    r = ctrsh.run("apply", path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "tarball refused" in r.stderr
    assert r.stderr.startswith(f"{path}:2:")
    assert not os.path.exists("/tmp/ctrsh-pwned")
    assert not any(".tmp-" in n for n in os.listdir(Path(ctrsh.env["CTRSH_DATA_DIR"]) / "images"))


def test_tarball_swapped_after_checking_is_refused(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """The archive is hashed when checked; the copy unpacked must have that hash."""
    tar = tar_with(tmp_path / "ok.tar", [("bin", "dir")])
    plan = ctrsh.run("export", ctrsh.recipe(recipe("test-swap", json.dumps({"tarball": {"path": str(tar)}}), "true")))
    assert plan.returncode == 0, plan.stderr
    tar_with(tmp_path / "ok.tar", [("bin", "dir"), ("x", "file")])  # changed after compiling
    script = tmp_path / "run.sh"
    script.write_text(plan.stdout)
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "FAILED" in r.stderr or "did NOT match" in r.stderr


def parallel(ctrsh: Ctrsh, rootfs: str, n: int = 2) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(
            ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe(f"test-par{i}", rootfs, "ls /bin/busybox; stat -c %a /bin /etc /etc/passwd"), f"p{i}.yaml")),
            # A state dir each: this is about the shared image cache (a shared state dir's last-one-out
            # `rmdir` races between containers; that is the namespaces phase's, reported separately).
            env={**ctrsh.env, "CTRSH_STATE_DIR": f"{ctrsh.env['CTRSH_STATE_DIR']}-par{i}"},
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: os.umask(0o077),
        )
        for i in range(n)
    ]  # fmt: skip
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_parallel_first_builds_give_one_good_image(dirs: dict[str, str], tmp_path: Path) -> None:
    fresh = Ctrsh({**dirs, "CTRSH_DATA_DIR": str(tmp_path / "data")}, tmp_path)
    for r in parallel(fresh, "{busybox: {}}", 3):
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["/bin/busybox", "755", "755", "644"]  # modes its own, under umask 077
    images = sorted(os.listdir(tmp_path / "data" / "images"))
    assert images == ["busybox", "busybox.lock", "busybox.source"]
    tar = make_tarball(tmp_path / "data" / "images" / "busybox", tmp_path / "bb.tar.xz")
    for r in parallel(fresh, json.dumps({"tarball": {"path": str(tar)}}), 3):
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["/bin/busybox", "755", "755", "644"]
    listed = fresh.run("images").stdout
    assert listed.count("tarball-") == 1 and "busybox" in listed
    subprocess.run(["rm", "-rf", str(tmp_path / "data")], check=True)


def test_rmi_refuses_an_image_in_use(dirs: dict[str, str], tmp_path: Path) -> None:
    fresh = Ctrsh({**dirs, "CTRSH_DATA_DIR": str(tmp_path / "data")}, tmp_path)
    proc = subprocess.Popen(
        fresh.cmd("apply", "-q", fresh.recipe(recipe("test-rmi", "{busybox: {}}", "echo ready; exec sleep 60"))),
        env=fresh.env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    try:
        listed = fresh.run("images").stdout
        assert "test-rmi" in listed.splitlines()[1]
        r = fresh.run("rmi", "busybox")
        assert r.returncode == 1 and "in use by: test-rmi" in r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    r = fresh.run("rmi", "busybox")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "data" / "images" / "busybox").exists()
    assert fresh.run("rmi", "busybox").returncode == 2
    subprocess.run(["rm", "-rf", str(tmp_path / "data")], check=True)
