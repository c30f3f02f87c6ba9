"""Attacks from inside a container: each must fail. And the privileges PID 1 starts with.

Every test here failed against the first version of ctrsh (a container was root on the host).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import shutil
import subprocess
import termios
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh

DOCKER_CAPS = "00000000a80425fb"  # Docker's 14 capabilities as a /proc/PID/status mask


def recipe(name: str, script: str, extra: str = "", rootfs: str = "{busybox: {}}") -> str:
    return f"name: {name}\nrootfs: {rootfs}\n{extra}process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"


def status(out: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def test_pid1_has_dockers_privileges(ctrsh: Ctrsh) -> None:
    script = "grep -E '^(Cap|NoNewPrivs)' /proc/1/status; echo nofile:$(ulimit -Sn):$(ulimit -Hn); id"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-caps", script)))
    assert r.returncode == 0, r.stderr
    s = status(r.stdout)
    assert (s["CapBnd"], s["CapPrm"], s["CapEff"]) == (DOCKER_CAPS,) * 3
    assert (s["CapInh"], s["CapAmb"], s["NoNewPrivs"]) == ("0" * 16, "0" * 16, "1")
    assert s["nofile"] == "1024:1024"
    assert "uid=0(root) gid=0(root)" in r.stdout


def test_recipe_sets_privileges(ctrsh: Ctrsh) -> None:
    script = (
        "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; echo nofile:$(ulimit -Sn):$(ulimit -Hn); id -u; id -g"
    )
    extra = (
        "security: {capabilities: none, user: '1000:1001', no_new_privileges: false, rlimits: {nofile: '100:200'}}\n"
    )
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-caps-none", script, extra)))
    assert r.returncode == 0, r.stderr
    s = status(r.stdout)
    # setuid and setgid stay in the bounding set only: switching to the user needs them after the drop
    assert (s["CapBnd"], s["CapEff"], s["NoNewPrivs"], s["nofile"]) == ("00000000000000c0", "0" * 16, "0", "100:200")
    assert r.stdout.splitlines()[-2:] == ["1000", "1001"]
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-caps-all", script, "security: {capabilities: all}\n")))
    assert r.returncode == 0, r.stderr
    assert int(status(r.stdout)["CapEff"], 16) & (1 << 21)  # CAP_SYS_ADMIN: the recipe asked for all


ESCAPES = {
    "core_pattern": "cat /proc/sys/kernel/core_pattern > /tmp/cp && cat /tmp/cp > /proc/sys/kernel/core_pattern",
    "sysrq": "echo h > /proc/sysrq-trigger",
    "remount /sys rw": "mount -o remount,rw /sys",
    "mount tmpfs": "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m",
    "mount cgroup v1": "mkdir -p /tmp/cg && mount -t cgroup -o memory cgroup /tmp/cg",
    "unmount a mask": "umount /proc/keys || umount /proc/sys",
    "new link": "ip link add ctrsh-esc0 type veth peer name ctrsh-esc1",
    "move a link to the host": "ip link set lo netns 1",
    "sethostname with uts": "hostname pwned",
    "read kcore-class masks": '[ -n "$(cat /proc/keys /proc/timer_list /proc/sched_debug 2>/dev/null)" ]',
    "list /sys/firmware": '[ -n "$(ls /sys/firmware)" ]',
    "see the old root": "ls -d /.oldroot /.ctrsh",
}


@pytest.mark.parametrize("attack", list(ESCAPES), ids=list(ESCAPES))
def test_escape_attempt_fails(ctrsh: Ctrsh, attack: str) -> None:
    host_core = Path("/proc/sys/kernel/core_pattern").read_text()
    script = f"if {{ {ESCAPES[attack]}; }} >/dev/null 2>&1; then echo ESCAPED; else echo refused; fi"
    name = "test-esc-" + "".join(c if c.isalnum() else "-" for c in attack)[:40].strip("-")
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe(name, script)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "refused\n", attack
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core


def test_caller_fds_do_not_leak_in(ctrsh: Ctrsh) -> None:
    """CVE-2024-21626's class: a descriptor the caller had open must not reach PID 1."""
    fd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:  # PID 1 is ls: it has 0, 1, 2 and its own handle on the directory it lists, the lowest free fd
        r = subprocess.run(
            ctrsh.cmd("apply", "-q", ctrsh.recipe("name: test-fds\nrootfs: {busybox: {}}\nprocess: {args: [ls, /proc/self/fd]}\n")),
            env=ctrsh.env, cwd=ROOT, capture_output=True, text=True, timeout=60, pass_fds=(fd,),
        )  # fmt: skip
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "1", "2", "3"]


def test_closed_stdout_becomes_dev_null(ctrsh: Ctrsh) -> None:
    script = 'out=$(readlink /proc/1/fd/1); echo "$out" >&2'
    cmd = ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-closed", script)))
    r = subprocess.run(["sh", "-c", '"$@" >&-', "sh", *cmd], env=ctrsh.env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "/dev/null\n"


def tiocsti_binary(tmp_path: Path) -> Path:
    """A static program that tries to type into every terminal it can reach (TIOCSTI)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the TIOCSTI probe")
    src = tmp_path / "tiocsti.c"
    src.write_text(
        "#include <stdio.h>\n#include <errno.h>\n#include <string.h>\n#include <fcntl.h>\n#include <sys/ioctl.h>\n"
        'int main(void) { const char *cmd = "echo INJECTED\\n"; int fds[4] = {0, 1, 2, -1};\n'
        '  fds[3] = open("/dev/tty", O_RDWR);\n'
        "  for (int i = 0; i < 4; i++) { int ok = 1;\n"
        "    for (const char *c = cmd; *c; c++) if (ioctl(fds[i], TIOCSTI, c) < 0) { ok = 0; break; }\n"
        '    printf("fd%d:%s\\n", i, ok ? "typed" : strerror(errno)); }\n  return 0; }\n'
    )
    out = tmp_path / "tiocsti"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(src)], check=True)
    return out


def test_container_cannot_type_into_the_callers_terminal(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """The caller's terminal is a test-made pty whose slave is ctrsh's controlling terminal."""
    probe = tiocsti_binary(tmp_path)
    data = tmp_path / "data"  # an image of this test's own, with the probe in it
    env = {**ctrsh.env, "CTRSH_DATA_DIR": str(data)}
    subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-sti-build", "true"))), env=env, check=True)
    shutil.copy(probe, data / "images/busybox/bin/tiocsti")
    master, slave = pty.openpty()

    def make_ctty() -> None:  # what a login does: a new session whose terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.run(
            ctrsh.cmd("apply", "-q", ctrsh.recipe("name: test-sti\nrootfs: {busybox: {}}\nprocess: {args: [tiocsti]}\n")),
            env=env, cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE, preexec_fn=make_ctty, timeout=60,
        )  # fmt: skip
        os.set_blocking(master, False)
        out = b""
        try:
            while chunk := os.read(master, 4096):
                out += chunk
        except BlockingIOError:
            pass
        os.set_blocking(slave, False)
        typed = b""
        with contextlib.suppress(BlockingIOError):  # what TIOCSTI pushed would wait as input on the caller's side
            typed = os.read(slave, 4096)
    finally:
        os.close(master)
        os.close(slave)
        shutil.rmtree(data)  # this test's own image
    assert proc.returncode == 0, proc.stderr
    lines = out.decode().split()
    assert "typed" not in out.decode(), lines
    assert b"INJECTED" not in typed


def test_terminal_gives_the_container_its_own_pty(ctrsh: Ctrsh) -> None:
    recipe_text = (
        "name: test-pty\nrootfs: {busybox: {}}\n"
        "process: {args: [/bin/sh, -c, 'tty; echo TERM=$TERM; stty size'], terminal: true}\n"
    )
    cmd = " ".join(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe_text)))
    r = subprocess.run(["script", "-qec", f"stty rows 33 cols 111; {cmd}", "/dev/null"],
                       env={**ctrsh.env, "TERM": "vt220"}, cwd=ROOT, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout
    lines = r.stdout.replace("\r", "").replace("^@", "").splitlines()
    assert lines[:3] == ["/dev/pts/0", "TERM=vt220", "33 111"], lines  # its own pty, the caller's TERM and size


def test_pid1_is_a_session_leader_without_a_terminal(ctrsh: Ctrsh) -> None:
    script = "set -- $(cat /proc/1/stat); echo sid=$6 tty=$7; ls -l /proc/1/fd/0"
    master, slave = pty.openpty()
    try:
        r = subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-sess", script))), env=ctrsh.env,
                           cwd=ROOT, stdin=slave, capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == "sid=1 tty=0"  # PID 1 leads its own session and has no controlling terminal
    assert second.endswith("-> /dev/null")  # stdin was a terminal: the container gets /dev/null


def test_piped_stdin_reaches_the_container(ctrsh: Ctrsh) -> None:
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-stdin", "tr a-z A-Z")), input="piped\n")
    assert (r.returncode, r.stdout) == (0, "PIPED\n"), r.stderr


HOSTILE = {  # paths in the image -> where its symlink points
    "proc": "/",
    "dev": "/",
    "sys": "/tmp",
    ".oldroot": "/",
    ".ctrsh": "/",
    "etc": "/",
}


def test_hostile_image_symlinks_cannot_redirect_mounts(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """runc CVE-2019-19921's class: an image whose mount points are symlinks out of it."""
    data = tmp_path / "data"
    env = {**ctrsh.env, "CTRSH_DATA_DIR": str(data)}
    subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-hostile-build", "true"))), env=env, check=True)
    image = data / "images/busybox"
    for name, target in HOSTILE.items():
        path = image / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        path.symlink_to(target)
    if shutil.which("gcc"):  # a library the image asks every dynamic program to preload
        so = tmp_path / "evil.c"
        so.write_text(
            "#include <stdio.h>\n__attribute__((constructor)) static void f(void) "
            '{ FILE *f = fopen("/proc/self/root/tmp/PRELOADED", "w"); if (f) fclose(f); }\n'
        )
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(image / "evil.so"), str(so)], check=True)
        (image / "etc").unlink()
        (image / "etc").mkdir()
        (image / "etc/ld.so.preload").write_text("/evil.so\n")
    script = "ls /proc/1/ns >/dev/null && echo ok; ls /dev/null; ls /tmp/PRELOADED 2>/dev/null; true"
    r = subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-hostile", script))), env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout == "ok\n/dev/null\n"  # its own /proc and /dev; no preload ran
        assert not Path("/tmp/PRELOADED").exists()
    finally:
        shutil.rmtree(data)


# The same hardening with a user namespace: every escape above still fails, and PID 1 has Docker's
# capabilities (of its user namespace only), no_new_privs, and is root inside.
USERNS = "namespaces: [user, mount, uts, ipc, pid, net]\n"


@pytest.mark.parametrize("attack", list(ESCAPES), ids=list(ESCAPES))
def test_escape_attempt_fails_in_a_user_namespace(ctrsh: Ctrsh, attack: str) -> None:
    host_core = Path("/proc/sys/kernel/core_pattern").read_text()
    script = f"if {{ {ESCAPES[attack]}; }} >/dev/null 2>&1; then echo ESCAPED; else echo refused; fi"
    name = "test-uesc-" + "".join(c if c.isalnum() else "-" for c in attack)[:40].strip("-")
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe(name, script, USERNS)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "refused\n", attack
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core


def test_pid1_has_dockers_privileges_in_a_user_namespace(ctrsh: Ctrsh) -> None:
    script = "grep -E '^(Cap|NoNewPrivs)' /proc/1/status; echo nofile:$(ulimit -Sn):$(ulimit -Hn); id; ls /proc/self/fd"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe("test-ucaps", script, USERNS)))
    assert r.returncode == 0, r.stderr
    s = status(r.stdout)
    assert (s["CapBnd"], s["CapPrm"], s["CapEff"]) == (DOCKER_CAPS,) * 3
    assert (s["CapInh"], s["CapAmb"], s["NoNewPrivs"]) == ("0" * 16, "0" * 16, "1")
    assert s["nofile"] == "1024:1024"
    assert "uid=0(root) gid=0(root)" in r.stdout
    assert r.stdout.splitlines()[-4:] == ["0", "1", "2", "3"]  # fd 4 (the user ns file) is closed before the command
