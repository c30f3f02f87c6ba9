"""Attack 2, the exported script killed (SIGKILL: no trap runs) while its container runs, then
`ctrsh destroy` is the only way back.

FAILS while `destroy` cannot clean up what an exported script left (see attack2_notes.md); then
the test puts the host back itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Ctrsh
from .test_network import bridge_recipe


@pytest.mark.xfail(
    strict=True,
    reason="known gap: the exported script's shared network pieces record no parameters destroy could undo them with",
)
def test_destroy_cleans_up_after_a_killed_exported_script(ctrsh: Ctrsh, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    flag.mkdir()
    text = bridge_recipe(
        "test-a2-expkill", "while [ ! -e /f/stop ]; do sleep 0.1; done", "{mode: bridge, publish: ['18090:80']}"
    )
    text = text.replace("process:", f"mounts: [{{type: bind, source: {flag}, target: /f}}]\nprocess:")
    script = tmp_path / "run.sh"
    r = ctrsh.run("export", ctrsh.recipe(text), "-o", str(script))
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(
        ["bash", str(script)], env=ctrsh.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        rules = ""
        for _ in range(600):  # until the container runs (its DNAT is the last network step; bounds the wait)
            rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
            if "ctrsh:test-a2-expkill" in rules and proc.poll() is None:
                ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                if "/f/stop" in ps:
                    break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the script, its relay and the container: no trap runs
        proc.wait(timeout=30)
    finally:
        (flag / "stop").touch()
    d = ctrsh.run("destroy", "test-a2-expkill")
    left = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    state = Path(ctrsh.env["CTRSH_STATE_DIR"])
    mounts = Path("/proc/self/mounts").read_text()
    leftover = {
        "destroy failed": d.returncode != 0,
        "ns mounts": str(state / "test-a2-expkill" / "ns") in mounts,
        "bridge": "ctrsh0" in links,
        "shared rules": "ctrsh:bridge/ctrsh0" in left,
        "registry users": any((state / "network").glob("*/users/test-a2-expkill")),
    }
    if any(leftover.values()):
        put_back(ctrsh, state)
    assert not any(leftover.values()), f"after destroy: {leftover}; {d.stderr.strip()[-200:]}"


def put_back(ctrsh: Ctrsh, state: Path) -> None:
    """Undo by hand what destroy left, so the host is as found: the ns mounts and state dir, then the
    shared network pieces, through ctrsh's own last-user teardown (a container that comes and goes)."""
    subprocess.run(["umount", "--recursive", str(state / "test-a2-expkill" / "ns")], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(state / "test-a2-expkill")], check=False)
    for stale in (state / "network").glob("*/users/test-a2-expkill"):
        stale.unlink()
    r = ctrsh.run(
        "apply",
        "-q",
        ctrsh.recipe(bridge_recipe("test-a2-putback", "true", "{mode: bridge, publish: ['18090:80']}"), "pb.yaml"),
    )
    assert r.returncode == 0, r.stderr
