"""Preflight: what apply checks before running anything."""

from __future__ import annotations

import os
import sys

import pytest

from ctrsh.compile import compile_plan
from ctrsh.facts import Facts
from ctrsh.preflight import is_static, tools
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
