"""User namespace: root inside is host uid 100000, nobody special on the host; the image is used
through a shifted copy, cached by (image, maps); hostile images do not give host root.

Each is checked from the host (/proc/PID/status, file owners on disk), not only from inside.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

from .conftest import ROOT, Ctrsh
from .test_images import debian, debian_data  # noqa: F401  (fixtures: the cached Debian image)

USERNS = "namespaces: [user, mount, uts, ipc, pid, net]\n"
MAPPED = 100000  # root inside, by the default maps


def recipe(name: str, script: str, extra: str = "", rootfs: str = "{busybox: {}}", ns: str = USERNS) -> str:
    return f"name: {name}\nrootfs: {rootfs}\n{ns}{extra}process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"


def images_dir(ctrsh: Ctrsh) -> Path:
    return Path(ctrsh.env["CTRSH_DATA_DIR"]) / "images"


def shifted(ctrsh: Ctrsh, image: str) -> list[Path]:
    return sorted(
        p for p in images_dir(ctrsh).glob(f"{image}.shift-*") if p.is_dir() and "." not in p.name[len(image) + 7 :]
    )


def wait_log(ctrsh: Ctrsh, name: str, text: str) -> str:
    for _ in range(500):
        out = ctrsh.run("logs", name).stdout
        if text in out:
            return out
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never reached the log of {name}: {ctrsh.run('logs', name).stdout!r}")


def test_root_inside_is_nobody_on_the_host(ctrsh: Ctrsh, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, MAPPED, MAPPED)  # a bind volume root inside may write to
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET\n")
    secret.chmod(0o600)  # the host's root's only
    mounts = (
        f"mounts:\n  - {{type: bind, source: {shared}, target: /data}}\n"
        f"  - {{type: bind, source: {secret}, target: /secret, readonly: true}}\n"
    )
    script = (
        "trap 'exit 0' TERM; touch /data/made-inside; "
        "if cat /secret; then echo secret-read; else echo secret-denied; fi; id -u; echo ready; "
        "while :; do sleep 0.1; done"
    )
    name = "test-userns-id"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(recipe(name, script, mounts)))
    assert r.returncode == 0, r.stderr
    try:
        log = wait_log(ctrsh, name, "ready\n")
        assert "TOPSECRET" not in log and "secret-denied" in log and "\n0\n" in log  # root inside...
        pid1 = json.loads(ctrsh.run("ps", "--json").stdout)[0]["pid"]
        st = dict(line.split(":", 1) for line in Path(f"/proc/{pid1}/status").read_text().splitlines())
        assert st["Uid"].split() == [str(MAPPED)] * 4  # ...is host uid 100000: real, effective, saved, fs
        assert st["Gid"].split() == [str(MAPPED)] * 4
        made = (shared / "made-inside").stat()
        assert (made.st_uid, made.st_gid) == (MAPPED, MAPPED)
        # exec enters the user namespace too: root inside, the same map
        ex = ctrsh.run("exec", name, "/bin/sh", "-c", "id -u; cat /proc/self/uid_map; cat /proc/self/status")
        assert ex.returncode == 0, ex.stderr
        lines = ex.stdout.splitlines()
        assert lines[0] == "0" and lines[1].split() == ["0", str(MAPPED), "65536"]
        assert "nsenter --mount=/proc/self/fd/4" in ex.stderr
    finally:
        d = ctrsh.run("destroy", "--force", name)
    assert d.returncode == 0, d.stderr


CAPS_ALL = "security: {capabilities: all, readonly_paths: [], masked_paths: []}\n"
# With every capability *of the user namespace* and no read-only or masked kernel paths, root inside
# still cannot touch what belongs to the host: each line prints refused, or what the kernel said.
HOST_ATTACKS = {
    "load a module": "insmod /bin/busybox 2>&1 | grep -q 'Operation not permitted'",
    "set a host sysctl": "! echo 1 >/proc/sys/vm/drop_caches",
    "set core_pattern": "! echo '|/tmp/x' >/proc/sys/kernel/core_pattern",
    "make a disk device": "! mknod /tmp/sda b 8 0",
    "remount /sys rw": "! mount -o remount,rw /sys",
    "mount a new sysfs": "! mount -t sysfs sysfs /mnt",
    # busybox date exits 0 even when it cannot set the clock: what it says is what counts
    "change the host's time": "date -s 2001-01-01 2>&1 | grep -q 'Operation not permitted'",
}
if not Path("/proc/modules").exists():  # this kernel has no loadable modules: insmod says ENOSYS to anyone
    del HOST_ATTACKS["load a module"]
# ...while over its own namespaces the capabilities are real (so the attacks above were not refused
# for want of capabilities inside).
OWN = "hostname inside-ok && mkdir -p /tmp/m && mount -t tmpfs x /tmp/m && umount /tmp/m && echo own-ok"


def test_capabilities_reach_only_the_user_namespace(ctrsh: Ctrsh) -> None:
    host_core = Path("/proc/sys/kernel/core_pattern").read_text()
    lines = [f"if {{ {cmd}; }} >/dev/null 2>&1; then echo {i}:refused; else echo {i}:DONE; fi"
             for i, cmd in enumerate(HOST_ATTACKS.values())]  # fmt: skip
    script = "grep CapEff /proc/self/status; " + OWN + "; " + "; ".join(lines)
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-userns-caps", script, CAPS_ALL)))
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert int(out[0].split()[1], 16) & (1 << 21)  # CAP_SYS_ADMIN, inside
    assert out[1] == "own-ok"
    assert out[2:] == [f"{i}:refused" for i in range(len(HOST_ATTACKS))], dict(zip(HOST_ATTACKS, out[2:], strict=False))
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core


def test_writes_inside_and_one_shared_copy(ctrsh: Ctrsh) -> None:
    """A write in the rootfs works (root inside owns it) and never reaches the cached copy; a second
    container with the same maps reuses the copy, built once."""
    script = "echo new >/root/new && echo changed >/etc/passwd && mkdir /made && ls -lnd / /root /made | cut -c1-30"
    first = ctrsh.run("apply", ctrsh.recipe(recipe("test-userns-w1", script), "a.yaml"))
    assert first.returncode == 0, first.stderr
    assert [line.split()[2:4] for line in first.stdout.splitlines()] == [["0", "0"]] * 3
    copies = shifted(ctrsh, "busybox")
    assert len(copies) == 1
    copy = copies[0]
    before = sorted((str(p), p.lstat().st_mtime_ns, p.lstat().st_uid) for p in copy.rglob("*"))
    assert (copy / "etc/passwd").read_text().startswith("root:x:0:0")
    assert (copy / "bin/busybox").stat().st_uid == MAPPED and (copy / "etc").stat().st_uid == MAPPED
    second = ctrsh.run("apply", ctrsh.recipe(recipe("test-userns-w2", "cat /etc/passwd; ls /root"), "b.yaml"))
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("root:x:0:0") and "new" not in second.stdout  # container 1's writes: gone
    assert f"filesystem: {copy} exists, skipping the steps that make it" in second.stderr
    assert "ctrsh-shift" not in second.stderr  # built once (by this test or an earlier one)
    assert sorted((str(p), p.lstat().st_mtime_ns, p.lstat().st_uid) for p in copy.rglob("*")) == before
    listed = ctrsh.run("images")
    assert "+1 shifted for user namespaces" in listed.stdout, listed.stdout
    # another map is another copy
    other = 'uid_map: ["0 200000 65536"]\ngid_map: ["0 200000 65536"]\n'
    third = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-userns-w3", "id -u; stat -c %u /", other), "c.yaml"))
    assert third.returncode == 0, third.stderr
    assert third.stdout == "0\n0\n"
    assert len(shifted(ctrsh, "busybox")) == 2
    for p in shifted(ctrsh, "busybox"):
        if p != copy:
            assert (p / "bin/busybox").stat().st_uid == 200000


def hostile_tarball(tmp_path: Path, ctrsh: Ctrsh, extra_owner: int | None = None) -> Path:
    """busybox plus: a symlink to /, and a setuid copy of busybox owned by (host) uid 0."""
    build = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-userns-bb", "true", ns=""), "bb.yaml"))
    assert build.returncode == 0, build.stderr
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(images_dir(ctrsh) / "busybox"), str(tree)], check=True)
    (tree / "hostroot").symlink_to("/")
    evil = tree / "evil"
    subprocess.run(["cp", str(tree / "bin/busybox"), str(evil)], check=True)
    os.chown(evil, 0, 0)
    evil.chmod(0o4755)
    if extra_owner is not None:
        odd = tree / "odd"
        odd.write_text("x")
        os.chown(odd, extra_owner, extra_owner)
    tar = tmp_path / "hostile.tar"
    subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "-cf", str(tar), "."], check=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(tree)], check=True)
    return tar


def test_hostile_image_gives_no_host_root(ctrsh: Ctrsh, tmp_path: Path) -> None:
    tar = hostile_tarball(tmp_path, ctrsh)
    marker = f"ctrsh-userns-pwned-{os.getpid()}"
    script = (
        f"echo pwned >/hostroot/tmp/{marker}; ls -ln /evil | cut -c1-40; "
        "/evil sh -c 'grep Uid /proc/self/status'; "
        "if /evil cat /proc/1/root/etc/shadow >/dev/null 2>&1; then echo SHADOW; else echo no-shadow; fi"
    )
    rootfs = json.dumps({"tarball": {"path": str(tar)}})
    extra = "security: {no_new_privileges: false}\n"  # let the setuid bit do whatever it can
    before = set(images_dir(ctrsh).glob("tarball-*"))  # other tests' images share the data dir
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-userns-evil", script, extra, rootfs)))
    try:
        assert r.returncode == 0, r.stderr
        assert not Path(f"/tmp/{marker}").exists()  # the link to / is the container's /
        lines = r.stdout.splitlines()
        assert lines[0].startswith("-rwsr-xr-x") and lines[0].split()[2:4] == ["0", "0"]  # root's inside...
        copies = [p for p in set(images_dir(ctrsh).glob("tarball-*.shift-*")) - before
                  if p.is_dir() and ".tmp-" not in p.name]  # fmt: skip
        assert len(copies) == 1
        on_host = (copies[0] / "evil").stat()
        assert on_host.st_uid == MAPPED and on_host.st_mode & stat.S_ISUID  # ...host uid 100000's on disk
        # no file of the copy belongs to the host's root: a setuid one would be root on the host
        assert [p for p in copies[0].rglob("*") if p.lstat().st_uid == 0 or p.lstat().st_gid == 0] == []
        assert "no-shadow" in lines[-1]
    finally:
        image = next((p.name for p in set(images_dir(ctrsh).glob("tarball-*")) - before if ".shift-" not in p.name
                      and p.is_dir() and ".tmp-" not in p.name), None)  # fmt: skip
        if image:
            rm = ctrsh.run("rmi", image)
            assert rm.returncode == 0, rm.stderr
    # rmi removed the shifted copy and its .source with its image (only the lock stays, as for images)
    assert [p for p in set(images_dir(ctrsh).glob("tarball-*.shift-*")) - before if not p.name.endswith(".lock")] == []


def test_an_id_the_map_lacks_fails_the_copy(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """A file owned by an id outside the maps cannot be shifted: the apply fails and nothing is published."""
    tar = hostile_tarball(tmp_path, ctrsh, extra_owner=70000)
    rootfs = json.dumps({"tarball": {"path": str(tar)}})
    before = set(images_dir(ctrsh).glob("tarball-*.shift-*"))  # other tests' copies share the data dir
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-userns-odd", "true", rootfs=rootfs)))
    try:
        assert r.returncode != 0
        assert "odd" in r.stderr and "Invalid argument" in r.stderr, r.stderr[-2000:]
        assert [p for p in set(images_dir(ctrsh).glob("tarball-*.shift-*")) - before if p.is_dir()] == []
    finally:
        image = next((p.name for p in set(images_dir(ctrsh).glob("tarball-*")) - before if ".shift-" not in p.name
                      and p.is_dir() and ".tmp-" not in p.name), None)  # fmt: skip
        if image:
            assert ctrsh.run("rmi", image).returncode == 0


def test_volumes_belong_to_root_inside(ctrsh: Ctrsh) -> None:
    mounts = "mounts:\n  - {type: volume, source: test-userns-vol, target: /vol}\n  - {type: tmpfs, target: /scratch}\n"
    script = "echo kept >/vol/f && touch /scratch/f && stat -c '%u %g' /vol /scratch /dev /dev/shm"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-userns-vol", script, mounts)))
    vol = Path(ctrsh.env["CTRSH_DATA_DIR"]) / "volumes" / "test-userns-vol"
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["0 0"] * 4
        assert (vol.stat().st_uid, (vol / "f").stat().st_uid) == (MAPPED, MAPPED)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(vol)], check=True)


def test_security_user_and_a_map_of_two_ranges(ctrsh: Ctrsh) -> None:
    """`security.user` 1000 is the second range's: host uid 300000; both lines reach the kernel."""
    extra = (
        "uid_map: ['0 100000 1000', '1000 300000 10']\ngid_map: ['0 100000 1000', '1000 300000 10']\n"
        "security: {user: '1000:1000'}\n"
    )
    script = "id -u; id -g; grep CapEff /proc/self/status; cat /proc/self/uid_map"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-userns-user", script, extra)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["1000", "1000", "CapEff:\t" + "0" * 16]
    assert [line.split() for line in lines[3:]] == [["0", "100000", "1000"], ["1000", "300000", "10"]]


def test_exported_script_makes_the_same_user_namespace(ctrsh: Ctrsh, tmp_path: Path) -> None:
    script = "id; cat /proc/self/uid_map /proc/self/gid_map; echo x >/root/x && stat -c '%u %g' /root/x /"
    path = ctrsh.recipe(recipe("test-userns-export", script))
    applied = ctrsh.run("apply", "-q", path)
    assert applied.returncode == 0, applied.stderr
    out = tmp_path / "run.sh"
    assert ctrsh.run("export", path, "-o", str(out)).returncode == 0
    exported = subprocess.run(["bash", str(out)], capture_output=True, text=True, env=ctrsh.env, timeout=120)
    assert (exported.returncode, exported.stderr) == (0, "")
    assert exported.stdout == applied.stdout
    assert applied.stdout.splitlines()[1].split() == ["0", str(MAPPED), "65536"]


def test_debian_in_a_user_namespace(debian: Ctrsh) -> None:  # noqa: F811  (the fixture)
    """The tests' cached Debian image, shifted (once: the copy stays in that cache): apt runs, setuid
    files keep their bit and are root's inside, host uid 100000's on disk, and none is host root's."""
    script = "apt-get --version | head -1; id -u; stat -c '%a %u' /usr/bin/su /usr/bin/passwd; touch /var/lib/x"
    r = debian.run(
        "apply", "-q", debian.recipe(recipe("test-userns-deb", script, rootfs="{debootstrap: {suite: bookworm}}"))
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("apt ") and lines[1] == "0"
    assert lines[2:] == ["4755 0", "4755 0"]
    copies = [p for p in images_dir(debian).glob("bookworm-minbase-*.shift-*") if p.is_dir() and ".tmp-" not in p.name]
    assert copies
    for copy in copies:
        su = (copy / "usr/bin/su").stat()
        assert su.st_uid == MAPPED and su.st_mode & stat.S_ISUID
        assert not (copy / "dev/null").exists()  # device nodes are left out: /dev is ctrsh's own
        assert [p for p in copy.rglob("*") if p.lstat().st_uid == 0] == []


def test_parallel_first_copies_give_one_good_copy(dirs: dict[str, str], tmp_path: Path) -> None:
    """Three containers of one image and maps started together, with no copy yet: each works, and one
    copy is published (the others' builds are dropped, their work dirs removed)."""
    fresh = Ctrsh({**dirs, "CTRSH_DATA_DIR": str(tmp_path / "data")}, tmp_path)
    built = fresh.run("apply", "-q", fresh.recipe(recipe("test-userns-pbb", "true", ns=""), "bb.yaml"))
    assert built.returncode == 0, built.stderr
    procs = [
        subprocess.Popen(
            fresh.cmd("apply", "-q", fresh.recipe(recipe(f"test-userns-p{i}", "stat -c '%u %a' / /bin/busybox /tmp"),
                                                  f"p{i}.yaml")),
            env={**fresh.env, "CTRSH_STATE_DIR": f"{fresh.env['CTRSH_STATE_DIR']}-up{i}"},
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(3)
    ]  # fmt: skip
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr[-3000:]
        assert stdout.split() == ["0", "755", "0", "755", "0", "1777"]
    names = sorted(os.listdir(tmp_path / "data" / "images"))
    copies = [n for n in names if ".shift-" in n and not n.endswith((".lock", ".source"))]
    assert len(copies) == 1 and ".tmp-" not in copies[0], names
    subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path / "data")], check=True)
