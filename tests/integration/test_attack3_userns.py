"""Attack 3: the user namespace (issue 6 item 6), as a hostile container, image, recipe and host user.

Each test states what must hold; a failing one is an open hole (see attack3_notes.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import pwd
import shutil
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh

USERNS = "namespaces: [user, mount, uts, ipc, pid, net]\n"
MAPPED = 100000  # root inside, by the default maps
HERE = Path(__file__).resolve().parent


def recipe(name: str, script: str, extra: str = "", ns: str = USERNS, rootfs: str = "{busybox: {}}") -> str:
    return f"name: {name}\nrootfs: {rootfs}\n{ns}{extra}process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"


def wait_log(ctrsh: Ctrsh, name: str, text: str) -> str:
    for _ in range(500):
        out = ctrsh.run("logs", name).stdout
        if text in out:
            return out
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never reached the log of {name}: {ctrsh.run('logs', name).stdout!r}")


def pid1_of(ctrsh: Ctrsh, name: str) -> int:
    return int(next(c["pid"] for c in json.loads(ctrsh.run("ps", "--json").stdout) if c["name"] == name))


def as_host_user(uid: int, script: str) -> subprocess.CompletedProcess[str]:
    """A process of another host user, one who happens to have this uid (no capabilities)."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def static(tmp_path: Path, src: Path | str, name: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the probe")
    if isinstance(src, str):
        path = tmp_path / f"{name}.c"
        path.write_text(src)
        src = path
    out = tmp_path / name
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(src)], check=True)
    out.chmod(0o755)
    tmp_path.chmod(0o755)  # the bind source must be reachable by root inside (nobody special on the host)
    return out


# --- a host user whose uid is in the map ----------------------------------------------------------
# On Debian and Ubuntu useradd gives the first user the subordinate range 100000-165535 (SUB_UID_MIN
# 100000, SUB_UID_COUNT 65536 in /etc/login.defs): that user can become any of those uids (newuidmap).
# A map must not put the container there, nor on a host account: like Docker (user dockremap), ctrsh
# takes the ranges /etc/subuid and /etc/subgid give the user ctrsh, or else the first range no one has.


@contextlib.contextmanager
def host_subids(tmp_path: Path, text: str) -> Iterator[None]:
    """/etc/subuid and /etc/subgid with `text`, for this test only: bind mounts over them in the
    sandbox's private mount namespace (the host's files are never written), removed afterwards."""
    with open("/proc/self/mountinfo") as f:
        if not any(line.split()[4] == "/run" and " sandbox-run " in line for line in f):
            pytest.skip("needs scripts/sandbox: it bind-mounts over /etc/subuid in a private mount namespace")
    mounted: list[str] = []
    try:
        for name in ("subuid", "subgid"):
            fake = tmp_path / f"fake-{name}"
            fake.write_text(text)
            fake.chmod(0o644)
            subprocess.run(["mount", "--bind", str(fake), f"/etc/{name}"], check=True)
            mounted.append(f"/etc/{name}")
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", path], check=True)


def becomable(kind: str) -> list[tuple[int, int]]:
    """[first, end) host ids someone has (/etc/passwd or /etc/group) or can become (/etc/sub?id)."""
    from ctrsh.hostids import read

    ids = read()
    accounts, subs = (ids.users, ids.subuids) if kind == "uid" else (ids.groups, ids.subgids)
    return [(i, i + 1) for _, i in accounts] + [(first, first + n) for _, first, n in subs]


def test_a_host_user_with_the_mapped_uid_cannot_signal_the_container(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """A host where a user owns the subordinate range 100000-165535 (as useradd makes it): the default
    map must put the container on host ids outside every range someone has or can become, and that
    user (as any uid of its range) cannot signal the container."""
    name = "test-a3-signal"
    script = "trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done"
    with host_subids(tmp_path, "test-a3-owner:100000:65536\n"):
        r = ctrsh.run("apply", "-d", ctrsh.recipe(recipe(name, script)))
        assert r.returncode == 0, r.stderr
        try:
            wait_log(ctrsh, name, "ready\n")
            pid = pid1_of(ctrsh, name)
            for kind in ("uid", "gid"):
                (inside, outside, count), *more = (
                    tuple(map(int, line.split())) for line in Path(f"/proc/{pid}/{kind}_map").read_text().splitlines()
                )
                assert more == [] and inside == 0 and count == 65536
                taken = [(a, b) for a, b in becomable(kind) if a < outside + count and outside < b]
                assert taken == [], f"the container's host {kind}s {outside}-{outside + count - 1} overlap {taken}"
            uid = int(Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0])
            assert uid >= 165536  # not 100000: that one is test-a3-owner's to become
            for owner_uid in (100000, 165535):  # what test-a3-owner can be (newuidmap)
                stopped = as_host_user(owner_uid, f"kill -STOP {pid} && echo STOPPED; kill -CONT {pid}")
                assert "STOPPED" not in stopped.stdout, f"host uid {owner_uid} can SIGSTOP the container's PID 1"
        finally:
            d = ctrsh.run("destroy", "--force", name)
        assert d.returncode == 0, d.stderr


def test_the_default_map_is_ctrshs_subordinate_range(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """With 'ctrsh:START:65536' in /etc/subuid and /etc/subgid (as Docker's dockremap), the default map
    is that range, and `plan` says so."""
    text = recipe("test-a3-reserved", "cat /proc/self/uid_map /proc/self/gid_map")
    with host_subids(tmp_path, "test-a3-owner:100000:65536\nctrsh:700000:65536\n"):
        p = ctrsh.run("plan", ctrsh.recipe(text))
        assert p.returncode == 0, p.stderr
        assert "the default map takes host uids 700000-765535 and gids 700000-765535" in p.stdout
        r = ctrsh.run("apply", "-q", ctrsh.recipe(text))
    assert r.returncode == 0, r.stderr
    assert [line.split() for line in r.stdout.splitlines()] == [["0", "700000", "65536"]] * 2
    for copy in images_dir(ctrsh).glob("busybox.shift-*"):  # the copy for this map: not for later tests
        if copy.is_dir() and copy.name.count(".") == 1 and (copy / "bin/busybox").stat().st_uid == 700000:
            subprocess.run(["rm", "-rf", "--one-file-system", str(copy)], check=True)
            Path(f"{copy}.source").unlink(missing_ok=True)


def test_a_host_user_with_the_mapped_uid_cannot_reach_the_containers_files(ctrsh: Ctrsh) -> None:
    """/proc/PID/root of the container's processes: refused (they are not dumpable for that user)."""
    name = "test-a3-procroot"
    script = "echo s3cret >/root/secret; chmod 600 /root/secret; echo ready; while :; do sleep 0.1; done"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(recipe(name, script)))
    assert r.returncode == 0, r.stderr
    try:
        wait_log(ctrsh, name, "ready\n")
        pid = pid1_of(ctrsh, name)
        probe = as_host_user(
            MAPPED,
            f"cat /proc/{pid}/root/root/secret; echo x >/proc/{pid}/root/tmp/planted && echo PLANTED; "
            f"cat /proc/{pid}/environ",
        )
        assert "s3cret" not in probe.stdout and "PLANTED" not in probe.stdout and "HOSTNAME" not in probe.stdout
        ex = ctrsh.run("exec", name, "/bin/sh", "-c", "ls /tmp")
        assert "planted" not in ex.stdout
    finally:
        d = ctrsh.run("destroy", "--force", name)
    assert d.returncode == 0, d.stderr


def test_a_map_onto_an_existing_host_user_is_refused(ctrsh: Ctrsh) -> None:
    """A recipe that makes root inside the host's `nobody` (or any account in /etc/passwd): that user
    (and every daemon run as nobody) could signal the container, and its files would be the
    container's root's. Expected: a recipe error, exit 2, nothing run (as for host id 0)."""
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no nobody in /etc/passwd")
    extra = f"uid_map: ['0 {nobody} 1']\ngid_map: ['0 {nobody} 1']\n"
    r = ctrsh.run("plan", ctrsh.recipe(recipe("test-a3-nobody", "true", extra)))
    assert r.returncode == 2, f"a map onto host user nobody ({nobody}) is accepted:\n{r.stdout[-300:]}"
    assert f"uid_map[0]: '0 {nobody} 1' maps onto host uid {nobody}, the user 'nobody' in /etc/passwd" in r.stderr


# --- bad recipes ------------------------------------------------------------------------------------


def test_user_without_pid_is_a_recipe_error(ctrsh: Ctrsh) -> None:
    """Without a PID namespace of its own, root of the user namespace may not mount /proc: the start
    fails halfway ('mount: ./proc: permission denied'). It should be refused before anything runs."""
    ns = "namespaces: [user, mount, uts, ipc, net]\n"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a3-nopid", "echo started", ns=ns)))
    assert "started" not in r.stdout
    assert r.returncode == 2, f"exit {r.returncode}, not a recipe error: {r.stderr[-400:]}"


# --- a hostile container: a nested user namespace keeps every capability (no exec) ---------------


def test_a_nested_user_namespace_reaches_nothing_of_the_hosts(ctrsh: Ctrsh, tmp_path: Path) -> None:
    probe = static(tmp_path, HERE / "attack3_nested.c", "nested")
    mounts = f"mounts:\n  - {{type: bind, source: {probe}, target: /nested, readonly: true}}\n"
    text = f"name: test-a3-nested\nrootfs: {{busybox: {{}}}}\n{USERNS}{mounts}process:\n  args: [/nested]\n"
    host_core = Path("/proc/sys/kernel/core_pattern").read_text()
    r = ctrsh.run("apply", "-q", ctrsh.recipe(text))
    assert r.returncode == 0, r.stderr
    got = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert got["nested"] == "ok" and got["tmpfs"] == "ok", got  # its capabilities are real, over its own
    for attempt in ("mount-proc", "mount-sysfs", "remount-proc-sys-rw", "remount-sys-rw", "unmask-acpi",
                    "umount-proc-sys", "bind-proc-nonrecursive", "release-agent", "release-agent-named",
                    "core-pattern", "sysrq"):  # fmt: skip
        assert got[attempt] != "ok", (attempt, got)
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core
    assert not Path("/proc/sys/fs/binfmt_misc/ctrsh-attack3").exists()


# --- ctrsh exec into a user-namespace container ------------------------------------------------------


@pytest.mark.parametrize("ns", [USERNS, ""], ids=["userns", "no-userns"])
def test_exec_cannot_type_into_the_callers_terminal(ctrsh: Ctrsh, tmp_path: Path, ns: str) -> None:
    """`ctrsh exec` without -t, from an admin's terminal: the command (the container's, untrusted) must
    not be in the caller's session with the caller's terminal as its own, or TIOCSTI types commands
    into the admin's (host root) shell. Root inside being nobody on the host does not help."""
    src = (
        "#include <stdio.h>\n#include <errno.h>\n#include <string.h>\n#include <fcntl.h>\n#include <sys/ioctl.h>\n"
        'int main(void) { const char *cmd = "echo INJECTED\\n"; int fds[4] = {0, 1, 2, -1};\n'
        '  fds[3] = open("/dev/tty", O_RDWR);\n'
        "  for (int i = 0; i < 4; i++) { int ok = 1;\n"
        "    for (const char *c = cmd; *c; c++) if (ioctl(fds[i], TIOCSTI, c) < 0) { ok = 0; break; }\n"
        '    printf("fd%d:%s\\n", i, ok ? "typed" : strerror(errno)); }\n  return 0; }\n'
    )
    probe = static(tmp_path, src, "tiocsti")
    name = "test-a3-sti"
    mounts = f"mounts:\n  - {{type: bind, source: {probe}, target: /tiocsti, readonly: true}}\n"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(recipe(name, "echo ready; while :; do sleep 0.1; done", mounts, ns)))
    assert r.returncode == 0, r.stderr
    master, slave = pty.openpty()

    def make_ctty() -> None:  # what a login does: a new session whose terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        wait_log(ctrsh, name, "ready\n")
        proc = subprocess.run(
            ctrsh.cmd("exec", name, "/tiocsti"),
            env=ctrsh.env, cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE, preexec_fn=make_ctty,
            timeout=60,
        )  # fmt: skip
        os.set_blocking(master, False)
        out = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(master, 4096):
                out += chunk
        os.set_blocking(slave, False)
        typed = b""
        with contextlib.suppress(BlockingIOError):  # what TIOCSTI pushed waits as input on the caller's side
            typed = os.read(slave, 4096)
    finally:
        os.close(master)
        os.close(slave)
        d = ctrsh.run("destroy", "--force", name)
    assert d.returncode == 0, d.stderr
    assert proc.returncode == 0, proc.stderr
    assert "typed" not in out.decode() and b"INJECTED" not in typed, out.decode()


def test_exec_enters_the_user_namespace_as_pid1_is(ctrsh: Ctrsh) -> None:
    name = "test-a3-exec"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(recipe(name, "echo ready; while :; do sleep 0.1; done")))
    assert r.returncode == 0, r.stderr
    try:
        wait_log(ctrsh, name, "ready\n")
        pid = pid1_of(ctrsh, name)
        ex = ctrsh.run(
            "exec",
            name,
            "/bin/sh",
            "-c",
            "grep -E '^(Uid|Gid|Groups|CapBnd|CapEff|NoNewPrivs)' /proc/self/status; readlink /proc/self/ns/user",
        )
        assert ex.returncode == 0, ex.stderr
        st = dict(line.split(":", 1) for line in ex.stdout.splitlines() if ":" in line and "[" not in line)
        p1 = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        assert st["Uid"].split() == ["0"] * 4 and st["Gid"].split() == ["0"] * 4 and st["Groups"].strip() == ""
        assert st["CapBnd"].strip() == p1["CapBnd"].strip() and st["NoNewPrivs"].strip() == "1"
        assert ex.stdout.splitlines()[-1] == os.readlink(f"/proc/{pid}/ns/user")
    finally:
        d = ctrsh.run("destroy", "--force", name)
    assert d.returncode == 0, d.stderr


@pytest.mark.parametrize("ns", [USERNS, ""], ids=["userns", "no-userns"])
def test_exec_runs_no_container_binary_before_dropping_privileges(ctrsh: Ctrsh, tmp_path: Path, ns: str) -> None:
    """PID 1 moves itself into a nested user + mount namespace of its own and mounts a tmpfs over
    /proc there; `ctrsh exec` follows PID 1 into those namespaces (nsenter --target --all) and then
    runs its loader as /proc/self/fd/3/...: that path is now the container's. What runs must never
    have more than PID 1 has (its bounding set, no_new_privs)."""
    probe = static(tmp_path, HERE / "attack3_hijack.c", "hijack")
    name = "test-a3-hijack"
    mounts = f"mounts:\n  - {{type: bind, source: {probe}, target: /hijack, readonly: true}}\n"
    text = f"name: {name}\nrootfs: {{busybox: {{}}}}\n{ns}{mounts}process:\n  args: [/hijack]\n"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(text))
    assert r.returncode == 0, r.stderr
    try:
        wait_log(ctrsh, name, "ready\n")
        pid = pid1_of(ctrsh, name)
        p1 = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        ex = ctrsh.run("exec", name, "/bin/true")
        got = dict(line.split(":", 1) for line in ex.stdout.splitlines() if ":" in line)
        assert "HIJACKED" not in ex.stdout, f"the container's binary ran as exec's loader with {got}"
    finally:
        d = ctrsh.run("destroy", "--force", name)
    assert d.returncode == 0, d.stderr
    assert p1["NoNewPrivs"].strip() == "1"


# --- the shifted copy: cut-off builds and parallel first builds ----------------------------------


def images_dir(ctrsh: Ctrsh) -> Path:
    return Path(ctrsh.env["CTRSH_DATA_DIR"]) / "images"


def big_tarball(ctrsh: Ctrsh, tmp_path: Path) -> Path:
    """busybox plus a 192 MiB file: a shifted copy that takes a moment to make."""
    build = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a3-bb", "true", ns=""), "bb.yaml"))
    assert build.returncode == 0, build.stderr
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(images_dir(ctrsh) / "busybox"), str(tree)], check=True)
    with open(tree / "big", "wb") as f:
        for _ in range(192):
            f.write(os.urandom(1 << 20))
    tar = tmp_path / "big.tar"
    subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "-cf", str(tar), "."], check=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(tree)], check=True)
    return tar


def _descendant_running(pgid: int, word: str) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            if word.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                return True
        except (OSError, ProcessLookupError):
            continue
    return False


def test_a_shift_copy_cut_off_by_kill_9_is_never_used_and_destroy_clears_it(ctrsh: Ctrsh, tmp_path: Path) -> None:
    import signal

    tar = big_tarball(ctrsh, tmp_path)
    rootfs = json.dumps({"tarball": {"path": str(tar)}})
    name = "test-a3-kill"
    text = f"name: {name}\nrootfs: {rootfs}\n{USERNS}process:\n  args: [/bin/sh, -c, 'wc -c </big; ls / | wc -l']\n"
    path = ctrsh.recipe(text)
    proc = subprocess.Popen(ctrsh.cmd("apply", "-q", path), env=ctrsh.env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(30000):
            if _descendant_running(proc.pid, "ctrsh-shift") or proc.poll() is not None:
                break
            time.sleep(0.001)
        caught = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)  # ctrsh and the copy it runs, mid-copy
        proc.wait()
        assert caught, "the copy finished before it could be cut off"
        published = [p for p in images_dir(ctrsh).glob("tarball-*.shift-*") if p.is_dir() and "." not in p.name[-12:]]
        published = [p for p in published if ".tmp-" not in p.name and ".rm-" not in p.name]
        assert published == [], "a cut-off copy was published"
        d = ctrsh.run("destroy", "--force", name)
        assert d.returncode == 0, d.stderr
        left = [p.name for p in images_dir(ctrsh).iterdir() if ".tmp-" in p.name]
        assert left == [], f"destroy after kill -9 left build dirs: {left}"
        again = ctrsh.run("apply", "-q", path)
        assert again.returncode == 0, again.stderr
        assert again.stdout.split()[0] == str(192 << 20)
    finally:
        ctrsh.run("destroy", "--force", name)
        image = next((p.name for p in images_dir(ctrsh).glob("tarball-*") if ".shift-" not in p.name
                      and p.is_dir() and ".tmp-" not in p.name), None)  # fmt: skip
        if image:
            assert ctrsh.run("rmi", image).returncode == 0
        for p in images_dir(ctrsh).glob("tarball-*.shift-*.tmp-*"):  # what the hole leaves, so later tests run
            subprocess.run(["rm", "-rf", "--one-file-system", str(p)], check=True)


def test_two_first_builds_of_one_shift_copy_at_once(ctrsh: Ctrsh) -> None:
    """Two containers with the same (fresh) maps start together: both run, one copy is published,
    whole, and no build dir is left."""
    maps = "uid_map: ['0 400000 65536']\ngid_map: ['0 400000 65536']\n"
    build = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a3-bb2", "true", ns=""), "bb.yaml"))
    assert build.returncode == 0, build.stderr
    paths = [ctrsh.recipe(recipe(f"test-a3-par{i}", "ls /bin | wc -l; stat -c %u /bin/busybox", maps), f"p{i}.yaml")
             for i in range(2)]  # fmt: skip
    procs = [subprocess.Popen(ctrsh.cmd("apply", "-q", p), env=ctrsh.env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p in paths]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    try:
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-1500:]
        assert outs[0][0] == outs[1][0] and outs[0][0].split()[1] == "0"
        copies = [p for p in images_dir(ctrsh).glob("busybox.shift-*") if p.is_dir() and p.name.count(".") == 1]
        made = [p for p in copies if (p / "bin/busybox").stat().st_uid == 400000]
        assert len(made) == 1
        image = images_dir(ctrsh) / "busybox"
        assert len(list(made[0].rglob("*"))) == len(list(image.rglob("*")))
        assert [p.name for p in images_dir(ctrsh).iterdir() if ".tmp-" in p.name] == []
    finally:
        for p in images_dir(ctrsh).glob("busybox.shift-*"):
            if p.is_dir() and p.name.count(".") == 1 and (p / "bin/busybox").stat().st_uid == 400000:
                subprocess.run(["rm", "-rf", "--one-file-system", str(p)], check=True)
                Path(f"{p}.source").unlink(missing_ok=True)


def test_root_inside_cannot_rewrite_its_maps(ctrsh: Ctrsh) -> None:
    script = (
        "for f in uid_map gid_map; do if echo '0 0 1' >/proc/self/$f; then echo $f:WRITTEN; else echo $f:refused; fi; done; "
        "if echo deny >/proc/self/setgroups; then echo setgroups:WRITTEN; else echo setgroups:refused; fi; "
        "cat /proc/self/uid_map"
    )
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a3-maps", script)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["uid_map:refused", "gid_map:refused", "setgroups:refused"], lines
    assert lines[3].split() == ["0", str(MAPPED), "65536"]


def test_a_sparse_file_is_not_blown_up_by_the_shift_copy(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """A tarball of a few KiB holding a sparse 512 MiB file unpacks sparse; the shifted copy is made
    with `tar --create` without --sparse, so it writes every zero: a hostile image multiplies its size
    on the host's disk at will (a sparse TiB fills /var/lib). The copy should take no more room than
    its image."""
    build = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a3-bb3", "true", ns=""), "bb.yaml"))
    assert build.returncode == 0, build.stderr
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(images_dir(ctrsh) / "busybox"), str(tree)], check=True)
    with open(tree / "sparse", "wb") as f:
        f.truncate(512 << 20)
    tar = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-C", str(tree), "--sparse", "--numeric-owner", "-cf", str(tar), "."], check=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(tree)], check=True)
    assert tar.stat().st_size < 8 << 20
    rootfs = json.dumps({"tarball": {"path": str(tar)}})
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a3-sparse", "wc -c </sparse", rootfs=rootfs)))
    try:
        assert r.returncode == 0, r.stderr
        image = next(p for p in images_dir(ctrsh).glob("tarball-*") if ".shift-" not in p.name
                     and p.is_dir() and ".tmp-" not in p.name)  # fmt: skip
        copy = next(p for p in images_dir(ctrsh).glob(f"{image.name}.shift-*") if p.is_dir() and p.name.count(".") == 1)
        used_image = (image / "sparse").stat().st_blocks * 512
        used_copy = (copy / "sparse").stat().st_blocks * 512
        assert used_copy <= used_image + (1 << 20), f"image {used_image} bytes on disk, its shifted copy {used_copy}"
    finally:
        for p in images_dir(ctrsh).glob("tarball-*"):
            if ".shift-" not in p.name and p.is_dir() and ".tmp-" not in p.name:
                assert ctrsh.run("rmi", p.name).returncode == 0


def test_rmi_cannot_remove_a_shift_copy_an_apply_is_about_to_mount(ctrsh: Ctrsh) -> None:
    """The apply publishes the shifted copy, then mounts it and only later records it as in use
    (`record_image`, after the overlay mount) and holds no lock in between: an rmi in that window removes
    the copy (and the image) under the container. Caught by stopping the apply right after the publish."""
    import signal

    build = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-a3-bb4", "true", ns=""), "bb.yaml"))
    assert build.returncode == 0, build.stderr
    maps = "uid_map: ['0 600000 65536']\ngid_map: ['0 600000 65536']\n"
    name = "test-a3-rmirace"
    path = ctrsh.recipe(recipe(name, "cat /etc/passwd >/dev/null && echo image-ok || echo image-gone", maps))
    from ctrsh.images import shifted_dir

    copy = Path(shifted_dir(None, str(images_dir(ctrsh) / "busybox"), ("0 600000 65536",), ("0 600000 65536",)))  # type: ignore[arg-type]
    work = Path(f"{copy}.tmp-{name}")
    proc = subprocess.Popen(ctrsh.cmd("apply", "-q", path), env=ctrsh.env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stopped = False
    try:
        for _ in range(200000):
            if copy.is_dir() and not (work / "rootfs").exists():
                os.killpg(proc.pid, signal.SIGSTOP)
                stopped = True
                break
            if proc.poll() is not None:
                break
        assert stopped, "the apply finished before the copy was seen"
        rmi = ctrsh.run("rmi", "busybox", timeout=20)
        os.killpg(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        assert rmi.returncode != 0, f"rmi removed the image an apply was starting on: {out!r} {err[-300:]!r}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            proc.wait(timeout=120)
        ctrsh.run("destroy", "--force", name)
        if copy.is_dir():
            subprocess.run(["rm", "-rf", "--one-file-system", str(copy)], check=True)
            Path(f"{copy}.source").unlink(missing_ok=True)
