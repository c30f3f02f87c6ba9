"""The command line as a user meets it: exit codes, one-line errors, nothing run on bad input."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("mkdir", "mount", "umount", "touch", "ip", "unshare", "nsenter", "cp", "mv", "chmod", "sh", "ln",
         "mknod", "rm", "rmdir", "hostname", "env", "pivot_root", "install", "setsid", "setpriv", "flock")  # fmt: skip


def ctrsh(*args: str, env: dict[str, str] | None = None, user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "ctrsh", *args]
    if user is not None:  # drop root for real, as a user without sudo would run it
        argv = [shutil.which("setpriv") or "setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=60)


def nobody_can_run_python() -> bool:
    """Dropping to uid 65534 needs an interpreter and checkout that user can read (not one under /root)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return False
    probe = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", "import ctrsh.cli"]
    return subprocess.run(probe, cwd=ROOT, capture_output=True).returncode == 0


AS_NOBODY = pytest.mark.skipif(not nobody_can_run_python(), reason="needs root, and a python uid 65534 can run")


@pytest.fixture
def spy_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH where every tool ctrsh could call only records that it was called."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> {log}\n')
        (bin_dir / tool).chmod(0o755)
    return {
        "PATH": str(bin_dir),
        "CTRSH_STATE_DIR": str(tmp_path / "run"),
        "CTRSH_DATA_DIR": str(tmp_path / "data"),
    }, log


def test_bad_recipe_runs_nothing(tmp_path: Path, spy_path: tuple[dict[str, str], Path]) -> None:
    env, log = spy_path
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: ok\nrootfs: {busybox: {}}\nprocess: {args: [a]}\nnetwrk: {}\n")
    r = ctrsh("apply", str(bad), env=env)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"{bad}:4:1: unknown key 'netwrk'; did you mean 'network'?\n"
    assert not log.exists() and not (tmp_path / "run").exists()


def test_plan_needs_no_root_and_runs_nothing(spy_path: tuple[dict[str, str], Path]) -> None:
    env, log = spy_path
    r = ctrsh("plan", "recipes/hello.yaml", env=env, user=65534 if nobody_can_run_python() else None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('# ctrsh plan: container "hello" from recipes/hello.yaml')
    assert re.search(r"^ip netns add ctrsh-[0-9a-f]{8}-hello$", r.stdout, re.M)  # not the default state dir
    assert not log.exists()


@AS_NOBODY
def test_apply_as_non_root_is_one_line(spy_path: tuple[dict[str, str], Path]) -> None:
    env, log = spy_path
    r = ctrsh("apply", "recipes/hello.yaml", env=env, user=65534)
    assert r.returncode == 2
    assert r.stderr == "ctrsh: `ctrsh apply` needs root (namespaces, mounts): run it with sudo\n"
    assert not log.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
@pytest.mark.skipif(os.geteuid() != 0, reason="preflight checks root first")
def test_missing_tool_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tools are looked up on ctrsh's fixed PATH, not the caller's: point that one at a dir without `ip`.
    from ctrsh import preflight
    from ctrsh.compile import compile_plan
    from ctrsh.errors import UsageError
    from ctrsh.facts import Paths, detect
    from ctrsh.recipe import load

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        if tool != "ip" and (found := shutil.which(tool)):
            (bin_dir / tool).symlink_to(found)
    monkeypatch.setattr(preflight, "SAFE_PATH", str(bin_dir))
    facts = detect(str(tmp_path / "run"), str(tmp_path / "d"))
    plan = compile_plan(load("recipes/hello.yaml"), facts)
    with pytest.raises(UsageError) as e:
        preflight.check(plan, facts, Paths(facts, plan.name))
    assert str(e.value) == "missing ip: install with `apt-get install iproute2`"
    assert not (tmp_path / "run").exists()


def test_export_to_stdout_and_file(tmp_path: Path) -> None:
    r = ctrsh("export", "recipes/hello.yaml")
    assert r.returncode == 0 and r.stdout.startswith("#!/usr/bin/env bash\n")
    out = tmp_path / "hello.sh"
    assert ctrsh("export", "recipes/hello.yaml", "-o", str(out)).returncode == 0
    assert out.read_text() == r.stdout and os.access(out, os.X_OK)


def test_state_dir_option_and_env(tmp_path: Path) -> None:
    r = ctrsh("plan", "recipes/hello.yaml", "--state-dir", "/srv/st", env={"CTRSH_DATA_DIR": "/srv/data"})
    assert "mkdir -p -m 0700 /srv/st\n" in r.stdout and "lowerdir=/srv/data/images/busybox" in r.stdout
    r = ctrsh("plan", "recipes/hello.yaml", "--state-dir", "relative/dir")
    assert r.returncode == 2
    assert ctrsh("plan", "recipes/hello.yaml", "--state-dir", "/run/..").returncode == 2
    assert r.stderr == (
        "ctrsh: state dir (--state-dir or $CTRSH_STATE_DIR) must be an absolute path other than '/', "
        "without ',', ':', quotes, backslashes or white space: 'relative/dir'\n"
    )


def test_schema_is_json() -> None:
    import json

    r = ctrsh("schema")
    assert json.loads(r.stdout)["title"] == "ctrsh recipe"


def test_help_teaches() -> None:
    r = ctrsh("--help")
    assert r.returncode == 0
    for word in ("apply", "plan", "export", "destroy", "schema"):
        assert word in r.stdout


def test_export_refuses_a_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    target.chmod(0o600)
    link = tmp_path / "run.sh"
    link.symlink_to(target)
    r = ctrsh("export", "recipes/hello.yaml", "-o", str(link))
    assert (r.returncode, r.stdout) == (1, "")
    assert (
        r.stderr == f"ctrsh: refusing to write {link}: it exists and is a symlink; remove it or choose another name\n"
    )
    assert (target.read_text(), target.stat().st_mode & 0o7777) == ("keep\n", 0o600)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["precious", "run.sh"]


def test_export_refuses_a_directory_and_replaces_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    r = ctrsh("export", "recipes/hello.yaml", "-o", str(tmp_path / "d"))
    assert r.returncode == 1 and "it exists and is not a regular file" in r.stderr
    old = tmp_path / "old.sh"
    old.write_text("old")
    other = tmp_path / "hardlink"
    os.link(old, other)  # replaced by a rename: the other name keeps the old text
    assert ctrsh("export", "recipes/hello.yaml", "-o", str(old)).returncode == 0
    assert old.read_text().startswith("#!/usr/bin/env bash\n") and other.read_text() == "old"
    assert old.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "hardlink", "old.sh"]  # no temp file left


def test_a_data_dir_too_long_for_overlays_options_is_refused() -> None:
    long = "/" + "d" * 1400
    r = ctrsh("plan", "recipes/hello.yaml", "--data-dir", long)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        "ctrsh: data dir (--data-dir or $CTRSH_DATA_DIR) is 1401 bytes long; at most 1024: overlayfs' mount "
        "options hold it three times and the kernel limits them to one page (4096 bytes)\n"
    )
