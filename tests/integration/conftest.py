"""Integration tests: real containers, as root. Each test must leave the host exactly as it found it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostsnap import snapshot

ROOT = Path(__file__).resolve().parents[2]

if os.geteuid() != 0:
    pytest.skip("integration tests run real containers and need root", allow_module_level=True)


@pytest.fixture(scope="session")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Private state and data dirs: tests never touch a user's containers or images."""
    base = tmp_path_factory.mktemp("ctrsh")
    return {"CTRSH_STATE_DIR": str(base / "run"), "CTRSH_DATA_DIR": str(base / "data")}


@pytest.fixture(scope="session")
def netns_ready() -> None:
    """iproute2 makes /run/netns a shared mount on its first `ip netns add` and keeps it for good.
    That one-time setup is iproute2's, not container residue: do it before the first snapshot."""
    subprocess.run(["ip", "netns", "add", "ctrsh-test-prep"], check=True)
    subprocess.run(["ip", "netns", "delete", "ctrsh-test-prep"], check=True)


@pytest.fixture(scope="session")
def firewall_ready() -> None:
    """iptables-nft creates the filter, nat and raw tables on their first rule and keeps them, empty, for
    good (as /run/netns above). That is iptables' one-time setup: do it before the first snapshot."""
    for table, chain in (("filter", "FORWARD"), ("nat", "POSTROUTING"), ("raw", "PREROUTING")):
        subprocess.run(["iptables", "-t", table, "-A", chain, "-j", "ACCEPT"], check=True)
        subprocess.run(["iptables", "-t", table, "-D", chain, "-j", "ACCEPT"], check=True)


@pytest.fixture(autouse=True)
def host_unchanged(dirs: dict[str, str], netns_ready: None, firewall_ready: None) -> Iterator[None]:
    before = snapshot(dirs["CTRSH_STATE_DIR"], dirs["CTRSH_DATA_DIR"])
    yield
    after = snapshot(dirs["CTRSH_STATE_DIR"], dirs["CTRSH_DATA_DIR"])
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the host changed: {changed}"


class Ctrsh:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = {**os.environ, **env}
        self.tmp = tmp

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ctrsh", *args]

    def run(self, *args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cmd(*args), env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
        )  # type: ignore[call-overload, no-any-return]

    def netns(self, name: str) -> str:
        """The container's `ip netns` name: tied to the (non-default) state dir the tests use."""
        from ctrsh.facts import Paths, detect

        return Paths(detect(self.env["CTRSH_STATE_DIR"], self.env["CTRSH_DATA_DIR"]), name).netns

    def recipe(self, text: str, name: str = "recipe.yaml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)


@pytest.fixture
def ctrsh(dirs: dict[str, str], tmp_path: Path) -> Ctrsh:
    return Ctrsh(dirs, tmp_path)
