"""Preflight: what apply checks before running anything."""

from __future__ import annotations

import os
import sys

import pytest

from ctrsh.compile import compile_plan
from ctrsh.facts import Facts
from ctrsh.preflight import is_static, step_tools, tools
from ctrsh.recipe import load


def test_tools_include_what_runs_behind_nsenter_and_unshare() -> None:
    found = tools(compile_plan(load("recipes/hello.yaml"), Facts()))
    for tool in ("mkdir", "mount", "ip", "unshare", "nsenter", "cp", "mknod", "sh", "pivot_root"):
        assert tool in found
    assert "--" not in found and not any(t.startswith("/run") for t in found)


def test_dynamic_binaries_are_not_static() -> None:
    assert not is_static(sys.executable if os.path.exists(sys.executable) else "/bin/sh")
    assert not is_static(__file__)  # not ELF at all


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox-static not installed (.ci/run installs it)")
def test_busybox_static_is_static() -> None:
    assert is_static("/bin/busybox")


def test_recipe_args_are_not_tools() -> None:
    # `--` in the recipe's own command must not make preflight look for a host tool `hello`.
    recipe = "name: x\nrootfs: {busybox: {}}\nprocess: {args: [/bin/echo, --, hello, --, nsenter2]}\n"
    from ctrsh.recipe import parse

    found = tools(compile_plan(parse(recipe, "r.yaml"), Facts()))
    assert "hello" not in found and "nsenter2" not in found and "/bin/echo" not in found
    assert step_tools(("nsenter", "--mount=/m", "--", "unshare", "--pid", "--", "sh", "-c", "x", "--", "y")) == [
        "nsenter",
        "unshare",
        "sh",
    ]
