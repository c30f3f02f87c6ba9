"""Attack 2, networking: what a recipe's published ports do to the host's own services.

Each test FAILS while the hole it names exists (see attack2_notes.md).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

from .conftest import Ctrsh
from .test_network import bridge_recipe, host_server, start  # noqa: F401  (fixture)


def ask(port: int, tries: int = 100) -> str:
    """The first line a server on 127.0.0.1:port sends (retried while the container starts: bounds the wait)."""
    last = ""
    for _ in range(tries):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                last = s.makefile().readline()
                if last:
                    return last
        except OSError:
            pass
        time.sleep(0.1)
    return last


def test_publish_does_not_hijack_a_listening_host_port(ctrsh: Ctrsh, host_server: int) -> None:  # noqa: F811
    """HIGH. A host service listens on PORT; a recipe publishing PORT gets no error (Docker's
    docker-proxy fails to bind: "port is already allocated"): the OUTPUT/PREROUTING DNAT silently
    sends every new connection to PORT - the host's own sshd, a database - into the container."""
    assert ask(host_server).startswith("peer "), "the host's server answers before the container"
    script = "while true; do echo from-the-container | nc -l -p 80; done"
    proc = start(
        ctrsh, ctrsh.recipe(bridge_recipe("test-a2-hijack", script, f"{{mode: bridge, publish: ['{host_server}:80']}}"))
    )
    try:
        got = ""
        for _ in range(50):  # until the container has started (or apply refused and exited)
            if proc.poll() is not None:
                break
            got = ask(host_server, tries=1)
            if got.startswith("from-the-container"):
                break
            time.sleep(0.1)
        assert not got.startswith("from-the-container"), "the host's listening port now leads into the container"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(ctrsh.cmd("destroy", "test-a2-hijack"), env=ctrsh.env, capture_output=True, check=False)
