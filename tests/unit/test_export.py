"""Export text: valid bash, shellcheck-clean, and the same commands as the plan."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from ctrsh.compile import compile_plan
from ctrsh.export import export_script
from ctrsh.facts import Facts
from ctrsh.recipe import load


@pytest.fixture(params=["hello", "hostnet", "shell"])
def script(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    plan = compile_plan(load(f"recipes/{request.param}.yaml"), Facts())
    text = export_script(plan)
    path = tmp_path / "run.sh"
    path.write_text(text)
    return str(path), text


def test_bash_parses_it(script: tuple[str, str]) -> None:
    subprocess.run(["bash", "-n", script[0]], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (.ci/run installs it)")
def test_shellcheck_is_silent(script: tuple[str, str]) -> None:
    out = subprocess.run(["shellcheck", script[0]], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "", out.stdout


def test_structure(script: tuple[str, str]) -> None:
    text = script[1]
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text and "trap cleanup EXIT" in text
    assert text.index("trap cleanup EXIT") < text.index("# == rootfs")  # the trap is set before anything runs


def test_same_commands_as_the_plan() -> None:
    plan = compile_plan(load("recipes/hello.yaml"), Facts())
    text = export_script(plan)
    at = 0
    for step in plan.steps:  # in order (a command may come twice: each found after the one before)
        at = text.index(step.command + "\n", at) + 1
    for step in plan.steps:
        if step.undo_command:
            assert f"undo {shlex.quote(step.undo_command)}\n" in text
