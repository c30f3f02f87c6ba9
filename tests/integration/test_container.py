"""Real containers: what a process sees inside, exit codes, the exported script, rollback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh

INSIDE = r"""
echo "pid=$$"
echo "hostname=$(hostname)"
ps -o pid,args | sed 1d | sed 's/^ *//'
echo "== mounts"; awk '{print $2, $3}' /proc/self/mounts
echo "== dev"; for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done
echo "== oldroot"; [ -e /.oldroot ] && echo present || echo absent
echo "== links"; ip -o link | cut -d: -f2 | tr -d ' '
echo "== ns"; for n in mnt uts ipc pid net cgroup; do readlink /proc/self/ns/$n; done
"""


def inside_recipe(name: str, script: str = INSIDE, extra: str = "") -> str:
    return (
        f"name: {name}\nrootfs: {{busybox: {{}}}}\nhostname: {name}-host\n{extra}"
        f"process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"
    )


def shipped(recipe: str, name: str) -> str:
    """A recipe from recipes/, renamed so tests never clash with a user's container of that name."""
    return re.sub(r"(?m)^name: .*$", f"name: {name}", (ROOT / f"recipes/{recipe}.yaml").read_text())


def section(out: str, title: str) -> list[str]:
    return out.split(f"== {title}\n")[1].split("\n==")[0].strip().splitlines()


def test_hello_recipe(ctrsh: Ctrsh) -> None:
    r = ctrsh.run("apply", ctrsh.recipe(shipped("hello", "test-hello")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello from hello, pid 1\n")
    assert f"ip netns add {ctrsh.netns('test-hello')}\n" in r.stderr  # the trace shows each command on stderr
    assert "# teardown: undo what ran, newest first" in r.stderr


def test_what_the_container_sees(ctrsh: Ctrsh) -> None:
    r = ctrsh.run("apply", "-q", ctrsh.recipe(inside_recipe("test-inside")))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # -q: no trace
    out = r.stdout
    assert "pid=1\n" in out and "hostname=test-inside-host\n" in out
    procs = [line for line in out.split("hostname=")[1].split("== mounts")[0].splitlines()[1:] if line]
    assert procs[0].startswith("1 /bin/sh -c"), procs  # the recipe's command is PID 1
    assert all(int(p.split()[0]) < 20 for p in procs), procs  # nothing from the host
    mounts = section(out, "mounts")
    core = [
        "/ overlay",
        "/dev tmpfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/dev/mqueue mqueue",
        "/sys sysfs",
        "/proc proc",
    ]
    etc = [m for m in mounts if m.startswith("/etc/")]  # bound from the state dir: its fs type
    assert sorted(m.split()[0] for m in etc) == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
    assert sorted(m for m in mounts if m.count("/") == 1 or m.startswith("/dev/")) == sorted(core)
    kernel = [m for m in mounts if m not in core and m not in etc]  # masked and read-only kernel paths
    assert "/proc/sys proc" in kernel and all(m.startswith(("/proc/", "/sys/")) for m in kernel), kernel
    assert section(out, "dev") == [
        "/dev/null character special file 1:3 666",
        "/dev/zero character special file 1:5 666",
        "/dev/full character special file 1:7 666",
        "/dev/random character special file 1:8 666",
        "/dev/urandom character special file 1:9 666",
        "/dev/tty character special file 5:0 666",
    ]
    assert section(out, "oldroot") == ["absent"]
    assert section(out, "links") == ["lo"]
    host_ns = [os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "uts", "ipc", "pid", "net", "cgroup")]
    assert not set(section(out, "ns")) & set(host_ns)  # every namespace is the container's own


def test_chosen_namespaces_only(ctrsh: Ctrsh) -> None:
    recipe = inside_recipe("test-hostnet", extra="namespaces: [mount, pid]\n").replace(
        "hostname: test-hostnet-host\n", ""
    )
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe))
    assert r.returncode == 0, r.stderr
    ns = section(r.stdout, "ns")
    assert ns[1] == os.readlink("/proc/self/ns/uts") and ns[4] == os.readlink("/proc/self/ns/net")
    assert ns[0] != os.readlink("/proc/self/ns/mnt") and ns[3] != os.readlink("/proc/self/ns/pid")


def test_exit_code_is_the_containers(ctrsh: Ctrsh) -> None:
    r = ctrsh.run("apply", "-q", ctrsh.recipe(inside_recipe("test-exit", "echo out; echo err >&2; exit 7")))
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")


def test_env_cwd_and_literal_arguments(ctrsh: Ctrsh) -> None:
    nasty = "$(touch /pwned) `id` 'q' \"d\" ; |"
    recipe = (
        "name: test-env\nrootfs: {busybox: {}}\nprocess:\n  cwd: /tmp\n  env: {GREETING: 'hi there'}\n"
        f'  args: [/bin/sh, -c, \'pwd; echo "$GREETING"; echo "$1"; env | sort\', sh, {json.dumps(nasty)}]\n'
    )
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["/tmp", "hi there", nasty]
    assert sorted(lines[3:]) == sorted(
        [
            "GREETING=hi there",
            "HOME=/root",
            "HOSTNAME=test-env",
            "PWD=/tmp",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SHLVL=1",
        ]
    )
    assert not os.path.exists("/pwned")


def test_exported_script_behaves_like_apply(ctrsh: Ctrsh, tmp_path: Path) -> None:
    # INSIDE without `ps`, whose list of a pipeline's own processes is a race
    script = "\n".join(line for line in INSIDE.splitlines() if not line.startswith("ps ")) + "\ncat /proc/1/cmdline"
    recipe = ctrsh.recipe(inside_recipe("test-export", script))
    applied = ctrsh.run("apply", "-q", recipe)
    exported_sh = tmp_path / "run.sh"
    assert ctrsh.run("export", recipe, "-o", str(exported_sh)).returncode == 0
    exported = subprocess.run(["bash", str(exported_sh)], capture_output=True, text=True, env=ctrsh.env, timeout=120)
    assert (exported.returncode, exported.stderr) == (0, "")
    strip_ns = lambda s: re.sub(r"\[\d+\]", "[N]", s)  # noqa: E731  namespace ids differ per run, nothing else
    assert strip_ns(exported.stdout) == strip_ns(applied.stdout)
    assert "pid=1" in applied.stdout


def test_failing_step_rolls_back(ctrsh: Ctrsh) -> None:
    netns = ctrsh.netns("test-fail")
    subprocess.run(["ip", "netns", "add", netns], check=True)  # makes step `ip netns add` fail
    try:
        r = ctrsh.run("apply", ctrsh.recipe(inside_recipe("test-fail")))
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=True)
    assert r.returncode == 125
    assert re.search(
        rf"ctrsh: step \d+ of \d+ failed \(namespaces\): ip netns add {netns}\n"
        rf"  exit code 1\n    Cannot create namespace file \"/run/netns/{netns}\": File exists",
        r.stderr,
    ), r.stderr
    # the error comes first, then the rollback (3 steps where the state dir was there already: the
    # namespace mount, the state dir, the image's use record; 4 with the state dir's parent)
    assert re.search(r"# failed: rolled back [34] steps\n$", r.stderr), r.stderr
    assert r.stdout == ""


def test_name_in_use(ctrsh: Ctrsh) -> None:
    state = Path(ctrsh.env["CTRSH_STATE_DIR"]) / "test-busy"
    state.mkdir(parents=True)
    try:
        r = ctrsh.run("apply", ctrsh.recipe(inside_recipe("test-busy")))
    finally:
        state.rmdir()
        state.parent.rmdir()
    assert r.returncode == 125
    assert r.stderr.startswith("ctrsh: a container named 'test-busy' already exists")
    assert r.stderr.count("\n") == 1  # one line, and nothing ran


def start_sleeper(ctrsh: Ctrsh, name: str) -> subprocess.Popen[str]:
    """A container that says `ready` and sleeps, in its own process group like a terminal job."""
    recipe = ctrsh.recipe(inside_recipe(name, "echo ready; exec sleep 60"))
    proc = subprocess.Popen(
        ctrsh.cmd("apply", recipe), env=ctrsh.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt", "sleep")
    return proc


def wait_for_pid1(mnt_nsfile: str, comm: str) -> None:
    """Until the container's PID 1 is `comm` (the shell that said `ready` has exec'd it)."""
    from ctrsh.procs import container_pids, is_init

    for _ in range(200):
        pids = [p for p in container_pids(mnt_nsfile) if is_init(p)]
        if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == comm:
            return
        time.sleep(0.01)
    raise AssertionError(f"PID 1 never became {comm}")


def test_ctrl_c_stops_and_rolls_back(ctrsh: Ctrsh) -> None:
    proc = start_sleeper(ctrsh, "test-ctrlc")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole foreground group
    assert proc.wait(timeout=30) == 130
    assert proc.stderr is not None and "the container's PID 1 ignores it" in proc.stderr.read()


def test_sigterm_rolls_back(ctrsh: Ctrsh) -> None:
    proc = start_sleeper(ctrsh, "test-term")
    proc.terminate()  # to ctrsh alone: it must take the container down with it
    assert proc.wait(timeout=30) == 143


def test_destroy_after_ctrsh_was_killed(ctrsh: Ctrsh) -> None:
    proc = start_sleeper(ctrsh, "test-kill9")
    proc.kill()
    proc.wait(timeout=30)
    time.sleep(0.2)
    r = ctrsh.run("destroy", "test-kill9")
    assert r.returncode == 0, r.stderr
    # the cgroup kill, the first undo as in the plan, then the rest
    assert "ctrsh-kill" in r.stderr and f"ip netns delete {ctrsh.netns('test-kill9')}" in r.stderr


def test_interactive_shell_on_a_terminal(ctrsh: Ctrsh) -> None:
    """A real pty (util-linux `script`): the shell is interactive, Ctrl-C is its own, exit code passes through."""
    recipe = ctrsh.recipe("name: test-tty\nrootfs: {busybox: {}}\nprocess: {args: [/bin/sh], terminal: true}\n")
    cmd = " ".join(ctrsh.cmd("apply", "-q", recipe))
    proc = subprocess.Popen(["script", "-qec", cmd, "/dev/null"], env=ctrsh.env, cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("[ -t 0 ] && echo tty-$((6*7))\n")
    proc.stdin.flush()
    for line in proc.stdout:
        if line.startswith("tty-42"):
            break
    proc.stdin.write("\x03")  # Ctrl-C: the interactive shell catches it and stays
    proc.stdin.flush()
    time.sleep(0.5)
    out, _ = proc.communicate("echo still-$((1+1)); exit 5\n", timeout=30)
    assert "still-2" in out
    assert proc.returncode == 5


@pytest.mark.parametrize("recipe", ["hello", "inspect", "hostnet"])
def test_shipped_recipes_run(ctrsh: Ctrsh, recipe: str) -> None:
    r = ctrsh.run("apply", "-q", ctrsh.recipe(shipped(recipe, f"test-{recipe}")))
    assert r.returncode == 0, r.stderr


def test_container_gets_default_signal_dispositions(ctrsh: Ctrsh) -> None:
    """Python ignores SIGPIPE; the container must not inherit that (`yes` would complain of EPIPE)."""
    r = ctrsh.run("apply", "-q", ctrsh.recipe(inside_recipe("test-pipe", "yes | head -n 1")))
    assert (r.returncode, r.stdout, r.stderr) == (0, "y\n", "")
    # PID 1 itself (not a shell, which sets its own) starts with nothing ignored or blocked
    args = "[/bin/grep, -E, '^Sig(Ign|Blk)', /proc/self/status]"
    r = ctrsh.run(
        "apply", "-q", ctrsh.recipe(f"name: test-sigs\nrootfs: {{busybox: {{}}}}\nprocess: {{args: {args}}}\n")
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"]


def test_destroy_without_a_journal(ctrsh: Ctrsh) -> None:
    """ctrsh killed before its journal was written: destroy finds the (marked) pieces by name."""
    from ctrsh import owner
    from ctrsh.facts import Paths, detect

    state = Path(ctrsh.env["CTRSH_STATE_DIR"]) / "test-orphan"
    (state / "ns").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    paths = Paths(detect(ctrsh.env["CTRSH_STATE_DIR"], ctrsh.env["CTRSH_DATA_DIR"]), "test-orphan")
    (state / owner.MARK).write_text(owner.content(paths) + "\n")  # as the mark step writes it
    subprocess.run(["ip", "netns", "add", ctrsh.netns("test-orphan")], check=True)
    r = ctrsh.run("destroy", "test-orphan")
    assert r.returncode == 0, r.stderr
    assert f"ip netns delete {ctrsh.netns('test-orphan')}" in r.stderr
    assert not state.exists()
    state.parent.rmdir()  # the test made it
    r = ctrsh.run("destroy", "test-orphan")
    assert r.returncode == 2 and r.stderr.startswith("ctrsh: no container 'test-orphan' here")


def test_exported_script_stops_the_container_on_sigterm(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """As apply does: SIGTERM stops the container at once, then the EXIT trap undoes everything."""
    recipe = ctrsh.recipe(inside_recipe("test-script-term", "echo ready; exec sleep 60"))
    script = tmp_path / "run.sh"
    assert ctrsh.run("export", recipe, "-o", str(script)).returncode == 0
    proc = subprocess.Popen(["bash", str(script)], env=ctrsh.env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.terminate()
    assert proc.wait(timeout=30) == 143


def test_exported_script_ctrl_c(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """Ctrl-C reaches a PID 1 that handles it; one that cannot (sleep as init) is stopped."""
    handles = "trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.1; done"
    for name, body, code, out in (
        ("test-script-int", handles, 3, "got-int\n"),
        ("test-script-int2", "echo ready; exec sleep 60", 130, ""),
    ):
        script = tmp_path / f"{name}.sh"
        assert ctrsh.run("export", ctrsh.recipe(inside_recipe(name, body)), "-o", str(script)).returncode == 0
        proc = subprocess.Popen(["bash", str(script)], env=ctrsh.env, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        wait_for_pid1(f"{ctrsh.env['CTRSH_STATE_DIR']}/{name}/ns/mnt", "sleep" if code == 130 else "sh")
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: to the whole foreground group
        assert proc.wait(timeout=30) == code
        assert proc.stdout.read() == out


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.25, 0.35, 0.45])
def test_sigterm_at_any_moment_rolls_back(ctrsh: Ctrsh, delay: float) -> None:
    """Whatever step is running when SIGTERM comes (setup, the container's start), ctrsh stops and undoes it all."""
    recipe = ctrsh.recipe(inside_recipe("test-anytime", "exec sleep 60"))
    proc = subprocess.Popen(ctrsh.cmd("apply", "-q", recipe), env=ctrsh.env, cwd=ROOT, start_new_session=True)
    time.sleep(delay)
    proc.terminate()
    assert proc.wait(timeout=30) in (143, -signal.SIGTERM)  # -SIGTERM: it came before ctrsh set its handlers
