"""Detached containers and their lifecycle: apply -d, ps, exec, logs, stop, destroy; the name's lock;
stop's grace time; every fatal signal rolls back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh
from .test_container import inside_recipe, wait_for_pid1

HANDLES_TERM = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"


def ps(ctrsh: Ctrsh) -> dict[str, dict[str, object]]:
    r = ctrsh.run("ps", "--json")
    assert r.returncode == 0, r.stderr
    return {row["name"]: row for row in json.loads(r.stdout)}


def wait_log(ctrsh: Ctrsh, name: str, text: str) -> str:
    for _ in range(500):
        r = ctrsh.run("logs", name)
        if text in r.stdout:
            return r.stdout
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never reached the log of {name}")


def lock_file(ctrsh: Ctrsh, name: str) -> Path:
    return Path(f"{ctrsh.env['CTRSH_STATE_DIR']}.{name}.lock")


def test_detached_lifecycle(ctrsh: Ctrsh) -> None:
    name = "test-detach"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, HANDLES_TERM)))
    assert r.returncode == 0, r.stderr
    assert "setsid --fork sh -c" in r.stderr  # the holder is a printed step like the others
    try:
        row = ps(ctrsh)[name]
        assert row["state"] == "running" and isinstance(row["pid"], int)
        pid1 = row["pid"]
        assert Path(f"/proc/{pid1}/status").exists()
        assert "while :" in str(row["command"])
        # what stays on the host for it: the holder sh (and PID 1's unshare), no Python
        holder = int(lock_file(ctrsh, name).read_text())
        assert Path(f"/proc/{holder}/comm").read_text().strip() == "sh"
        python = [p for p in os.listdir("/proc") if p.isdigit() and _python_for(p, name)]
        assert python == []

        # one name, one container
        again = ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, HANDLES_TERM)))
        assert again.returncode == 125
        assert f"a container named '{name}' is running (pid {pid1})" in again.stderr
        fg = ctrsh.run("apply", ctrsh.recipe(inside_recipe(name, HANDLES_TERM)))
        assert fg.returncode == 125 and "is running" in fg.stderr

        assert wait_log(ctrsh, name, "ready\n") == "ready\n"
        refused = ctrsh.run("destroy", name)
        assert refused.returncode != 0 and "is running, not destroyed" in refused.stderr
        assert ps(ctrsh)[name]["state"] == "running"

        # exec: its namespaces, its privileges, its environment, no descriptor of ours
        ex = ctrsh.run(
            "exec", name, "/bin/sh", "-c",
            'hostname; echo "pid1=$(cat /proc/1/cmdline | tr "\\0" " ")"; grep -E "^(CapBnd|NoNewPrivs)" /proc/self/status;'
            ' echo "home=$HOME"; ls /proc/self/fd | sort -n | tr "\\n" " "; echo; [ -e /.ctrsh ] && echo tools || echo no-tools',
        )  # fmt: skip
        assert ex.returncode == 0, ex.stderr
        lines = ex.stdout.splitlines()
        assert lines[0] == f"{name}-host"
        assert lines[1].startswith("pid1=/bin/sh -c trap")  # its PID namespace: PID 1 is the container's
        status = Path(f"/proc/{pid1}/status").read_text()
        cap_bnd = next(line for line in status.splitlines() if line.startswith("CapBnd"))
        assert lines[2] == cap_bnd and lines[3] == "NoNewPrivs:\t1"
        assert lines[4] == "home=/root"
        assert lines[5].split() == ["0", "1", "2", "3"]  # 3: ls's own listing of /proc/self/fd
        assert lines[6] == "no-tools"
        assert "nsenter --mount=/proc/self/fd/4" in ex.stderr  # printed like apply's steps
        assert ctrsh.run("exec", name, "/bin/sh", "-c", "exit 6").returncode == 6

        # stop: SIGTERM to PID 1, which handles it and exits 7
        st = ctrsh.run("stop", name)
        assert st.returncode == 0, st.stderr
        assert f"kill -TERM {pid1}" in st.stderr
        assert ps(ctrsh)[name]["state"] == "exited 7"
        assert ctrsh.run("logs", name).stdout == "ready\ngot-term\n"
        assert "is not running" in ctrsh.run("exec", name, "true").stderr
    finally:
        d = ctrsh.run("destroy", "--force", name)
    assert d.returncode == 0, d.stderr
    assert not lock_file(ctrsh, name).exists()
    assert name not in ps(ctrsh)


def _python_for(pid: str, name: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmd and b"ctrsh" in cmd and name.encode() in cmd


def test_exits_on_its_own_and_shows_its_code(ctrsh: Ctrsh) -> None:
    name = "test-detach-exit"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, "echo bye; sleep 0.3; exit 3")))
    assert r.returncode == 0, r.stderr
    for _ in range(500):
        if ps(ctrsh)[name]["state"] != "running":
            break
        time.sleep(0.02)
    assert ps(ctrsh)[name]["state"] == "exited 3"
    assert ctrsh.run("logs", "-f", name).stdout == "bye\n"  # -f ends: the container has
    again = ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, "true")))
    assert again.returncode == 125 and "already exists" in again.stderr
    assert ctrsh.run("destroy", name).returncode == 0


def test_stop_kills_after_the_grace_time(ctrsh: Ctrsh) -> None:
    """A PID 1 that handles SIGTERM and carries on is killed once the grace time is over."""
    name = "test-grace"
    script = "trap 'echo ignoring-term' TERM; echo ready; while :; do sleep 0.1; done"
    assert ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, script))).returncode == 0
    try:
        wait_log(ctrsh, name, "ready")
        st = ctrsh.run("stop", "-t", "0.5", name)
        assert st.returncode == 0, st.stderr
        assert "SIGKILL every process in the container's cgroups" in st.stderr
        assert "ignoring-term" in ctrsh.run("logs", name).stdout
        assert ps(ctrsh)[name]["state"].startswith("exited ")  # type: ignore[union-attr]
    finally:
        assert ctrsh.run("destroy", name).returncode == 0


def test_destroy_force_and_all(ctrsh: Ctrsh) -> None:
    """`sleep` as PID 1 never sees SIGTERM (the kernel protects init): killed at once, no grace wait."""
    for name in ("test-all-a", "test-all-b"):
        r = ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, "exec sleep 600"), f"{name}.yaml"))
        assert r.returncode == 0, r.stderr
    assert {ps(ctrsh)[n]["state"] for n in ("test-all-a", "test-all-b")} == {"running"}
    d = ctrsh.run("destroy", "--all", "--force")
    assert d.returncode == 0, d.stderr
    assert "has no SIGTERM handler" in d.stderr
    assert ps(ctrsh) == {}


def start_foreground(ctrsh: Ctrsh, name: str, script: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ctrsh.cmd("apply", ctrsh.recipe(inside_recipe(name, script))), env=ctrsh.env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_foreground_apply_holds_the_name(ctrsh: Ctrsh) -> None:
    name = "test-fg-lock"
    proc = start_foreground(ctrsh, name, "echo ready; exec sleep 600")
    wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt", "sleep")
    again = ctrsh.run("apply", ctrsh.recipe(inside_recipe(name, "true")))
    assert again.returncode == 125 and f"a container named '{name}' is running (pid " in again.stderr
    assert ps(ctrsh)[name]["state"] == "running"
    refused = ctrsh.run("destroy", name)
    assert refused.returncode != 0 and "not destroyed" in refused.stderr
    assert proc.poll() is None  # the refusal touched nothing
    d = ctrsh.run("destroy", "--force", name)  # SIGTERM to the apply, which rolls back itself
    assert d.returncode == 0, d.stderr
    assert proc.wait(timeout=30) == 143


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGUSR1, signal.SIGPIPE, signal.SIGRTMIN + 3])
def test_every_fatal_signal_rolls_back(ctrsh: Ctrsh, sig: int) -> None:
    name = "test-sig"
    proc = start_foreground(ctrsh, name, "echo ready; exec sleep 600")
    wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt", "sleep")
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 128 + sig
    assert proc.stderr is not None and "rolled back" in proc.stderr.read()


def test_ctrl_c_sends_sigterm_first(ctrsh: Ctrsh) -> None:
    """PID 1 ignores Ctrl-C but handles SIGTERM: as `docker stop`, it gets SIGTERM first."""
    name = "test-ctrlc-term"
    proc = start_foreground(ctrsh, name, "trap '' INT; " + HANDLES_TERM.replace("exit 7", "exit 0"))
    wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt", "sh")
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=30)
    assert proc.stdout is not None and proc.stderr is not None
    err = proc.stderr.read()
    assert code == 130, err
    assert proc.stdout.read() == "got-term\n", err
    assert "SIGTERM, then SIGKILL after 10 s" in err


def init_recipe(name: str, args: str) -> str:
    return f"name: {name}\nrootfs: {{busybox: {{}}}}\nprocess:\n  init: true\n  args: {args}\n"


def test_init_is_pid_1_and_leaks_nothing(ctrsh: Ctrsh) -> None:
    script = "cat /proc/1/comm; ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; grep NoNewPrivs /proc/1/status"
    r = ctrsh.run("apply", "-q", ctrsh.recipe(init_recipe("test-init", json.dumps(["/bin/sh", "-c", script]))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["tini-static", "0 1 2 3 ", "NoNewPrivs:\t1"]  # tini runs unprivileged


def test_init_ends_a_pipeline(ctrsh: Ctrsh) -> None:
    """`ctrsh apply r.yaml | head -1`: without an init, `yes` as PID 1 ignores SIGPIPE and never ends."""
    proc = subprocess.Popen(
        ctrsh.cmd("apply", "-q", ctrsh.recipe(init_recipe("test-init-pipe", "['yes']"))), env=ctrsh.env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "y\n"
    proc.stdout.close()
    assert proc.wait(timeout=30) == 128 + signal.SIGPIPE


def test_init_takes_ctrl_c(ctrsh: Ctrsh) -> None:
    """tini blocks the signals it forwards (SigBlk, not SigCgt): Ctrl-C reaches the command through it."""
    name = "test-init-int"
    proc = subprocess.Popen(
        ctrsh.cmd("apply", ctrsh.recipe(init_recipe(name, "[/bin/sh, -c, 'echo ready; exec sleep 600']"))),
        env=ctrsh.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    from ctrsh.procs import container_pids

    mnt = f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt"
    for _ in range(200):
        if any(Path(f"/proc/{p}/comm").read_text().strip() == "sleep" for p in container_pids(mnt)):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert proc.stderr is not None and "ignores it" not in proc.stderr.read()  # forwarded, not stopped by ctrsh


def test_exported_script_sends_sigterm_first(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """As apply: SIGTERM to the script reaches a PID 1 that handles it, which exits cleanly."""
    name = "test-script-grace"
    script = tmp_path / "run.sh"
    assert ctrsh.run("export", ctrsh.recipe(inside_recipe(name, HANDLES_TERM)), "-o", str(script)).returncode == 0
    proc = subprocess.Popen(["bash", str(script)], env=ctrsh.env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt", "sh")
    proc.terminate()
    assert proc.wait(timeout=30) == 143
    assert proc.stdout.read() == "got-term\n"


def test_exported_script_rolls_back_on_sigquit(ctrsh: Ctrsh, tmp_path: Path) -> None:
    name = "test-script-quit"
    script = tmp_path / "run.sh"
    recipe = ctrsh.recipe(inside_recipe(name, "echo ready; exec sleep 600"))
    assert ctrsh.run("export", recipe, "-o", str(script)).returncode == 0
    proc = subprocess.Popen(["bash", str(script)], env=ctrsh.env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(timeout=30) == 128 + signal.SIGQUIT


TRACEME = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ptrace.h>
int main(int argc, char **argv) {
  printf("traceme=%ld\n", ptrace(PTRACE_TRACEME, 0, NULL, NULL));
  fflush(stdout);
  if (!strcmp(argv[1], "exec")) execl("/bin/sh", "sh", "-c", "echo after-exec", (char *)0);  /* stops: SIGTRAP */
  for (;;) pause();
}
"""


@pytest.mark.parametrize("init", [False, True])
def test_pid1_that_makes_its_parent_its_tracer_does_not_hang(ctrsh: Ctrsh, tmp_path: Path, init: bool) -> None:
    """amicontained's PTRACE_TRACEME: PID 1's parent (unshare, or tini for its child) becomes its tracer
    and never resumes it; the exec stops it for good. Neither apply nor stop may wait on it forever."""
    from .test_attack_image import gcc

    probe = tmp_path / "probe"
    gcc(tmp_path, TRACEME, probe, "-static", "-O1")
    mount = f"mounts: [{{type: bind, source: {probe}, target: /opt/probe, readonly: true}}]\n"

    def text(name: str, mode: str) -> str:
        return f"name: {name}\nrootfs: {{busybox: {{}}}}\n{mount}process: {{init: {str(init).lower()}, args: [/opt/probe, {mode}]}}\n"

    r = ctrsh.run("apply", "-q", ctrsh.recipe(text("test-traceme", "exec")), timeout=60)
    assert r.stdout == "traceme=0\n" and r.returncode != 0, r.stderr
    name = "test-traceme-d"
    assert ctrsh.run("apply", "-d", ctrsh.recipe(text(name, "pause"), "d.yaml")).returncode == 0
    try:
        wait_log(ctrsh, name, "traceme=0")
        st = ctrsh.run("stop", "-t", "1", name, timeout=60)
        assert st.returncode == 0, st.stderr
        assert ps(ctrsh)[name]["state"].startswith("exited ")  # type: ignore[union-attr]
    finally:
        assert ctrsh.run("destroy", name).returncode == 0


def test_two_applies_of_one_name_at_once(ctrsh: Ctrsh) -> None:
    """Started together, both pass the name check before either made anything: the lock lets one through."""
    name = "test-race"
    recipe = ctrsh.recipe(inside_recipe(name, "echo ready; exec sleep 600"))
    procs = [
        subprocess.Popen(
            ctrsh.cmd("apply", "-q", "-d", recipe),
            env=ctrsh.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = sorted((p.wait(timeout=120), p.communicate()[1]) for p in procs)
    try:
        assert [code for code, _ in results] == [0, 125], results
        assert "is running" in results[1][1] or "already exists" in results[1][1]
        assert ps(ctrsh)[name]["state"] == "running"
    finally:
        assert ctrsh.run("destroy", "--force", name).returncode == 0


def test_exec_with_a_terminal(ctrsh: Ctrsh) -> None:
    name = "test-exec-tty"
    assert ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, "exec sleep 600"))).returncode == 0
    try:
        cmd = " ".join(ctrsh.cmd("exec", "-it", name, "/bin/sh", "-c", "'[ -t 0 ] && [ -t 1 ] && echo both-tty'"))
        r = subprocess.run(["script", "-qec", cmd, "/dev/null"], env=ctrsh.env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "both-tty" in r.stdout.replace("\r", "")
        # without -t: no terminal, even when ctrsh has one (its output is relayed through pipes)
        cmd = " ".join(ctrsh.cmd("exec", name, "/bin/sh", "-c", "'[ -t 1 ] || echo no-tty'"))
        r = subprocess.run(["script", "-qec", cmd, "/dev/null"], env=ctrsh.env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert "no-tty" in r.stdout.replace("\r", ""), r.stdout
    finally:
        assert ctrsh.run("destroy", "--force", name).returncode == 0


LIMITS_SHOWN = 'echo "nofile $(ulimit -Sn) $(ulimit -Hn) fsize $(ulimit -Sf) $(ulimit -Hf) nproc $(ulimit -Hu)"'


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "nofile 1024 1024 fsize unlimited unlimited nproc"),  # the default: nofile 1024:1024, as Docker
        # security.rlimits (fsize in 512-byte blocks for the shell): soft below hard, both as PID 1 has them
        ("security: {rlimits: {nofile: '512:2048', fsize: '1048576', nproc: '300'}}\n", "nofile 512 2048 fsize 2048 2048 nproc 300"),
    ],
)  # fmt: skip
def test_exec_gets_the_containers_rlimits(ctrsh: Ctrsh, extra: str, expected: str) -> None:
    """`ctrsh exec` runs its command with PID 1's resource limits, not with those of the ctrsh that
    runs it: here ctrsh itself runs with nofile 4096:8192, no fsize limit and the host's nproc."""
    name = "test-exec-limits"
    r = ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, f"{LIMITS_SHOWN}; exec sleep 600", extra)))
    assert r.returncode == 0, r.stderr
    try:
        pid1 = ps(ctrsh)[name]["pid"]
        own = wait_log(ctrsh, name, "nofile").strip()
        assert own.startswith(expected), own
        roomy = ["prlimit", "--nofile=4096:8192", "--fsize=unlimited", "--"]  # (raising nproc needs CAP_SYS_RESOURCE)
        ex = subprocess.run(
            [*roomy, *ctrsh.cmd("exec", name, "/bin/sh", "-c", LIMITS_SHOWN)],
            env=ctrsh.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ex.returncode == 0, ex.stderr
        assert ex.stdout.strip() == own  # exactly PID 1's limits
        assert "prlimit --cpu=" in ex.stderr  # printed like the rest of the command
        limits = Path(f"/proc/{pid1}/limits").read_text()
        assert any(
            line.startswith("Max open files") and line.split()[3:5] == expected.split()[1:3]
            for line in limits.splitlines()
        )
        # the same with a terminal (exec -it runs the command under script(1))
        cmd = " ".join([*roomy, *ctrsh.cmd("exec", "-it", name, "/bin/sh", "-c", f"'{LIMITS_SHOWN}'")])
        tty = subprocess.run(["script", "-qec", cmd, "/dev/null"], env=ctrsh.env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert tty.returncode == 0, tty.stdout + tty.stderr
        assert own in tty.stdout.replace("\r", ""), tty.stdout
    finally:
        assert ctrsh.run("destroy", "--force", name).returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_exec_passes_signals_on(ctrsh: Ctrsh, sig: int) -> None:
    """Without -t the command runs in a session of its own (no controlling terminal to type into,
    test_attack3_userns), out of the reach of the signals a terminal sends to ctrsh's group: ctrsh
    passes them on, so Ctrl-C of `ctrsh exec` still ends the command, as before."""
    name = "test-exec-signal"
    assert ctrsh.run("apply", "-d", ctrsh.recipe(inside_recipe(name, "exec sleep 600"))).returncode == 0
    try:
        ex = subprocess.Popen(
            ctrsh.cmd("exec", name, "/bin/sh", "-c", "echo started; exec sleep 777"),
            env=ctrsh.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert ex.stdout is not None and ex.stdout.readline() == "started\n"
        ex.send_signal(sig)
        ex.wait(timeout=30)
        left = ctrsh.run("exec", name, "/bin/sh", "-c", "ps -o args | grep -c '^sleep 777' || :")
        assert left.stdout.strip() == "0", left.stdout + left.stderr
        assert ex.returncode == 128 + sig, ex.stderr.read() if ex.stderr else ""
    finally:
        assert ctrsh.run("destroy", "--force", name).returncode == 0


def test_exec_starts_in_pid1s_working_directory(ctrsh: Ctrsh) -> None:
    name = "test-exec-cwd"
    text = f"name: {name}\nrootfs: {{busybox: {{}}}}\nprocess:\n  args: [/bin/sleep, '600']\n  cwd: /tmp\n"
    assert ctrsh.run("apply", "-d", ctrsh.recipe(text)).returncode == 0
    try:
        ex = ctrsh.run("exec", name, "/bin/pwd")
        assert (ex.returncode, ex.stdout) == (0, "/tmp\n"), ex.stderr
    finally:
        assert ctrsh.run("destroy", "--force", name).returncode == 0
