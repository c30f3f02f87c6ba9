"""The exported script reports an OOM kill as apply does, and takes the same per-name lock."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import ROOT, Ctrsh
from .test_cgroups import recipe

HOG = "dd if=/dev/zero of=/dev/null bs=64M count=1"  # 64 MiB in one buffer, twice the limit
LIMIT = "resources: {memory: 32M}\n"
# Says it runs, then waits (up to 60 s) for the test to let it go: `read` on stdin, a pipe the test holds.
WAIT = "echo ready; read -t 60 line; echo done"


def exported(ctrsh: Ctrsh, tmp_path: Path, text: str, name: str) -> Path:
    script = tmp_path / f"{name}.sh"
    r = ctrsh.run("export", ctrsh.recipe(text, f"{name}.yaml"), "-o", str(script))
    assert r.returncode == 0, r.stderr
    return script


def test_exported_script_reports_an_oom_kill_and_exits_137(ctrsh: Ctrsh, tmp_path: Path) -> None:
    script = exported(ctrsh, tmp_path, recipe("test-exp-oom", f"exec {HOG}", LIMIT), "oom")
    r = subprocess.run(["bash", str(script)], env=ctrsh.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 137, r.stderr
    lines = [line for line in r.stderr.splitlines() if "OOM" in line]
    assert lines == [
        f"{script}: the container was OOM-killed: the kernel's OOM killer killed 1 process at its memory limit "
        "(memory: 32M)"
    ]


def test_exported_script_keeps_pid1_exit_code_when_a_child_is_oom_killed(ctrsh: Ctrsh, tmp_path: Path) -> None:
    script = exported(ctrsh, tmp_path, recipe("test-exp-oomc", f"{HOG}; echo dd=$?; exit 3", LIMIT), "oomc")
    r = subprocess.run(["bash", str(script)], env=ctrsh.env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (3, "dd=137\n"), r.stderr
    assert r.stderr.endswith(
        f"{script}: the kernel's OOM killer killed 1 process in the container at its memory limit (memory: 32M); "
        "its PID 1 exited 3\n"
    )


def test_exported_script_without_oom_says_nothing(ctrsh: Ctrsh, tmp_path: Path) -> None:
    script = exported(
        ctrsh, tmp_path, recipe("test-exp-fits", "dd if=/dev/zero of=/dev/null bs=4M count=1 2>&1", LIMIT), "fits"
    )
    r = subprocess.run(["bash", str(script)], env=ctrsh.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OOM" not in r.stderr, r.stderr


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        raise AssertionError(f"did not start: {line!r} {proc.communicate()[1][-2000:]}")
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate("go\n", timeout=60)
    return proc.returncode, out, err


def test_an_apply_and_the_exported_script_of_one_name_never_run_together(ctrsh: Ctrsh, tmp_path: Path) -> None:
    name = "test-exp-lock"
    text = recipe(name, WAIT)
    path = ctrsh.recipe(text, "lock.yaml")
    script = exported(ctrsh, tmp_path, text, "lock")
    lock = Path(f"{ctrsh.env['CTRSH_STATE_DIR']}.{name}.lock")

    # The script runs: apply of the name is refused, naming the script's pid (it holds the lock).
    proc = start(["bash", str(script)], ctrsh.env)
    try:
        r = ctrsh.run("apply", path)
        assert r.returncode == 125, r.stderr
        assert re.search(rf"a container named '{name}' is running \(pid \d+\)", r.stderr), r.stderr  # its PID 1
        assert (lock.stat().st_mode & 0o777) == 0o600
        ps = ctrsh.run("ps")
        assert any(line.split()[:2] == [name, "running"] for line in ps.stdout.splitlines()), ps.stdout
        again = subprocess.run(["bash", str(script)], env=ctrsh.env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 125 and f"a container named {name} is running (pid {proc.pid})" in again.stderr
    finally:
        code, out, err = finish(proc)
    assert (code, out) == (0, "done\n"), err  # ("ready" was read by start)
    assert not lock.exists()  # removed by the script as it ended, as apply removes it

    # apply runs: the script is refused, and changes nothing.
    proc = start(ctrsh.cmd("apply", "-q", path), ctrsh.env)
    try:
        r = subprocess.run(["bash", str(script)], env=ctrsh.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 125 and f"a container named {name} is running (pid {proc.pid})" in r.stderr, r.stderr
        assert r.stdout == ""
    finally:
        code, out, err = finish(proc)
    assert (code, out) == (0, "done\n"), err  # ("ready" was read by start)


def test_destroy_force_stops_a_running_exported_script(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """The script's pid is in the lock file, so `destroy --force` stops it as it stops a foreground apply:
    SIGTERM, and the script rolls back."""
    name = "test-exp-lock2"
    script = exported(ctrsh, tmp_path, recipe(name, "echo ready; exec sleep 60"), "lock2")
    proc = start(["bash", str(script)], ctrsh.env)
    try:
        refused = ctrsh.run("destroy", name)
        assert refused.returncode != 0 and "is running" in refused.stderr
        r = ctrsh.run("destroy", "--force", "-t", "1", name)
        assert r.returncode == 0, r.stderr
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
