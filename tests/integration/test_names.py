"""Containers on one bridge reach each other by name: each one's /etc/hosts lists the others, kept current.

Run through scripts/sandbox (a private network namespace holds the bridge). Traffic only goes to the
addresses of the containers these tests start.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from pathlib import Path

from .conftest import Ctrsh
from .test_network import bridge_recipe, forward_drop, start  # noqa: F401 (a fixture)

MARK = "# ctrsh: the other containers on this bridge (kept current by ctrsh)"


class Lines:
    """A container's stdout, line by line, with a bound on each wait (not a timing assertion)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.q = proc, queue.Queue[str]()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put("<eof>")

    def next(self, timeout: float = 60) -> str:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the container printed nothing more") from None


SERVE = "mkdir /www && echo served-by-$(hostname) > /www/index.html && httpd -p 80 -h /www; "

# A: serves, waits for B's name to appear, reaches B by name (ping, TCP), waits for it to go.
A = SERVE + (
    "echo ready; "
    "until grep -q test-nameb /etc/hosts; do sleep 0.1; done; "
    "ping -c 1 -w 10 test-nameb >/dev/null && echo a-pinged-b; "
    "for i in $(seq 100); do wget -q -O- http://test-nameb/ 2>/dev/null && break; sleep 0.1; done; "  # B's httpd
    "while grep -q test-nameb /etc/hosts; do sleep 0.1; done; echo b-gone; exec sleep 60"
)
# B: finds A by name at its start, reaches it, then serves until stopped.
B = SERVE + (
    "ping -c 1 -w 10 test-namea >/dev/null && echo b-pinged-a; wget -q -O- http://test-namea/; "
    "grep test-namea /etc/hosts; exec sleep 60"
)


def test_containers_reach_each_other_by_name_as_they_come_and_go(
    ctrsh: Ctrsh,
    forward_drop: None,  # noqa: F811
) -> None:
    state = Path(ctrsh.env["CTRSH_STATE_DIR"])
    a = start(ctrsh, ctrsh.recipe(bridge_recipe("test-namea", A), "a.yaml"))
    b = None
    try:
        out_a = Lines(a)
        assert out_a.next() == "ready"
        hosts_a = state / "test-namea" / "etc" / "hosts"
        inode = hosts_a.stat().st_ino
        assert hosts_a.read_text() == (
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.88.0.2\ttest-namea\n{MARK}\n"
        )
        b = start(ctrsh, ctrsh.recipe(bridge_recipe("test-nameb", B), "b.yaml"))
        out_b = Lines(b)
        # B, started second, finds A in its own hosts file from the start: ping and a TCP round trip by name
        assert [out_b.next() for _ in range(3)] == ["b-pinged-a", "served-by-test-namea", "10.88.0.2\ttest-namea"]
        # A's file was rewritten in place when B came: A (through its bind mount) sees B and reaches it
        assert [out_a.next(), out_a.next()] == ["a-pinged-b", "served-by-test-nameb"]
        assert hosts_a.stat().st_ino == inode
        assert hosts_a.read_text().endswith(f"{MARK}\n10.88.0.3\ttest-nameb\n")
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=60) == 143
        assert out_a.next() == "b-gone"  # B's teardown took its name out of A's file
        assert hosts_a.read_text().endswith(f"10.88.0.2\ttest-namea\n{MARK}\n")
    finally:
        for p in (b, a):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
    assert a.returncode == 143


def test_a_container_cannot_plant_names_in_anothers_hosts_file(ctrsh: Ctrsh) -> None:
    """An evil container overwrites its own /etc/hosts (a lie about a name, a fake entry for the next one):
    the next container's file is made from ctrsh's leases only, and the evil one's own is rewritten from
    ctrsh's copy of its lines, so its lies are gone there too."""
    evil = (
        "printf '10.88.0.99\\ttest-victim\\n6.6.6.6 test-evil\\n' > /etc/hosts; echo planted; "
        "until grep -q '^10.88.0.3' /etc/hosts; do sleep 0.1; done; cat /etc/hosts; exec sleep 60"
    )
    e = start(ctrsh, ctrsh.recipe(bridge_recipe("test-evil", evil), "evil.yaml"))
    try:
        out = Lines(e)
        assert out.next() == "planted"
        r = ctrsh.run("apply", "-q", ctrsh.recipe(bridge_recipe("test-victim", "cat /etc/hosts"), "victim.yaml"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-2:] == [MARK, "10.88.0.2\ttest-evil"]
        assert "6.6.6.6" not in r.stdout and "10.88.0.99" not in r.stdout
        seen = [out.next() for _ in range(5)]  # the evil one's file, rewritten when the victim came
        assert seen == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                        "10.88.0.2\ttest-evil", MARK, "10.88.0.3\ttest-victim"]  # fmt: skip
    finally:
        e.send_signal(signal.SIGTERM)
        assert e.wait(timeout=60) == 143


def test_destroy_after_a_kill_takes_the_name_out_even_without_its_journaled_undo(ctrsh: Ctrsh) -> None:
    import json

    state = Path(ctrsh.env["CTRSH_STATE_DIR"])
    a = start(ctrsh, ctrsh.recipe(bridge_recipe("test-namekeep", "echo ready; exec sleep 60"), "a.yaml"))
    try:
        assert Lines(a).next() == "ready"
        b = start(ctrsh, ctrsh.recipe(bridge_recipe("test-namekill", "echo ready; exec sleep 60"), "b.yaml"))
        assert Lines(b).next() == "ready"
        hosts_a = state / "test-namekeep" / "etc" / "hosts"
        assert hosts_a.read_text().endswith(f"{MARK}\n10.88.0.3\ttest-namekill\n")
        b.kill()  # SIGKILL: no teardown
        b.wait(timeout=30)
        # as if ctrsh had been killed after the names step ran and before its undo reached the journal
        journal = state / "test-namekill" / "journal"
        undos = json.loads(journal.read_text())["undo"]
        kept = [u for u in undos if "ctrsh-hosts" not in u]
        assert len(kept) == len(undos) - 1
        journal.write_text(json.dumps({"undo": kept}))
        r = ctrsh.run("destroy", "test-namekill")
        assert r.returncode == 0, r.stderr
        assert "ctrsh-hosts" in r.stderr
        assert hosts_a.read_text().endswith(f"10.88.0.2\ttest-namekeep\n{MARK}\n")
    finally:
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=60) == 143
