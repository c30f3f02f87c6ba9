"""Bridge networking for real: veth, bridge, NAT, published ports, allocation, clean teardown.

Run through scripts/sandbox: its private network namespace holds the bridge, the
rules and the test's "outside" host, so nothing here reaches a real network.
Traffic only goes to loopback and to addresses these tests create.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh
from .test_container import shipped

OUTSIDE_NS, OUTSIDE_HOST, OUTSIDE_PEER = "ctrsh-test-outside", "198.51.100.1", "198.51.100.2"
OWN_ADDR = "192.0.2.1"  # the host's "own" address: one the test puts on lo
PEER_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("listening", flush=True)
while True:
    c, peer = s.accept(); c.sendall(f"peer {peer[0]}\\n".encode()); c.close()
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def bridge_recipe(name: str, script: str, network: str = "{mode: bridge}") -> str:
    return (
        f"name: {name}\nrootfs: {{busybox: {{}}}}\nnetwork: {network}\n"
        f"process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"
    )


@pytest.fixture
def forward_drop() -> Iterator[None]:
    """A host whose FORWARD policy is DROP (Docker sets it so): ctrsh's ACCEPT rules must carry the traffic."""
    sh("iptables", "-P", "FORWARD", "DROP")
    yield
    sh("iptables", "-P", "FORWARD", "ACCEPT")


@pytest.fixture
def outside() -> Iterator[str]:
    """Another host, simulated: a netns on a veth from the host, not routed to the containers' subnet, so
    only NAT lets it answer them. A TCP server there replies with the peer address it sees."""
    sh("ip", "netns", "add", OUTSIDE_NS)
    sh("ip", "link", "add", "ctrshtout", "type", "veth", "peer", "name", "ctrshtout1", "netns", OUTSIDE_NS)
    sh("ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", "ctrshtout")
    sh("ip", "link", "set", "ctrshtout", "up")
    for cmd in (["addr", "add", f"{OUTSIDE_PEER}/24", "dev", "ctrshtout1"], ["link", "set", "ctrshtout1", "up"],
                ["link", "set", "lo", "up"]):  # fmt: skip
        sh("ip", "-n", OUTSIDE_NS, *cmd)
    server = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE_NS, sys.executable, "-c", PEER_SERVER, OUTSIDE_PEER, "9999"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline() == "listening\n"
    try:
        yield OUTSIDE_NS
    finally:
        server.kill()
        server.wait()
        sh("ip", "link", "delete", "ctrshtout")
        sh("ip", "netns", "delete", OUTSIDE_NS)


@pytest.fixture
def own_address() -> Iterator[str]:
    sh("ip", "addr", "add", f"{OWN_ADDR}/32", "dev", "lo")
    yield OWN_ADDR
    sh("ip", "addr", "delete", f"{OWN_ADDR}/32", "dev", "lo")


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on the host (all addresses) that replies with the peer address it sees."""
    srv = socket.create_server(("0.0.0.0", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                c, peer = srv.accept()
            except OSError:
                return
            c.sendall(f"peer {peer[0]}\n".encode())
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    srv.close()


def fetch(url: str, tries: int = 100) -> str:
    """GET with retries while the container starts (not a timing assertion: it only bounds the wait)."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def start(ctrsh: Ctrsh, recipe: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ctrsh.cmd("apply", recipe), env=ctrsh.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def test_web_recipe_published_on_loopback_own_address_and_to_another_host(
    ctrsh: Ctrsh, forward_drop: None, outside: str, own_address: str
) -> None:
    proc = start(ctrsh, ctrsh.recipe(shipped("web", "test-web")))
    try:
        assert fetch("http://127.0.0.1:8080/") == "hello from test-web\n"  # OUTPUT DNAT + route_localnet
        assert fetch(f"http://{own_address}:8080/") == "hello from test-web\n"  # the host's own address
        assert fetch("http://10.88.0.2/") == "hello from test-web\n"  # the container directly
        sh("busybox", "ping", "-c", "1", "-W", "5", "10.88.0.2")
        # another host reaches the published port: PREROUTING DNAT, then FORWARD (policy DROP) accepts it
        got = subprocess.run(
            ["ip", "netns", "exec", outside, "busybox", "wget", "-q", "-O-", f"http://{OUTSIDE_HOST}:8080/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert got.stdout == "hello from test-web\n", got.stderr
        # but it cannot open connections to the container's other ports: FORWARD drops them
        nope = subprocess.run(
            ["ip", "netns", "exec", outside, "busybox", "nc", "-w", "2", "10.88.0.2", "80"],
            capture_output=True, text=True, timeout=30, input="",
        )  # fmt: skip
        assert nope.returncode != 0
        # traffic passing through to port 8080 elsewhere keeps its destination (DNAT only to local addresses)
        server = subprocess.Popen(
            ["ip", "netns", "exec", outside, sys.executable, "-c", PEER_SERVER, OUTSIDE_PEER, "8080"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None and server.stdout.readline() == "listening\n"
            via = subprocess.run(
                ["ip", "netns", "exec", ctrsh.netns("test-web"), "busybox", "nc", "-w", "5", OUTSIDE_PEER, "8080"],
                capture_output=True, text=True, timeout=30, input="",
            )  # fmt: skip
            assert via.stdout == f"peer {OUTSIDE_HOST}\n", via.stderr  # the outside server answered, not httpd
        finally:
            server.kill()
            server.wait()
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        ours = [line for line in rules.splitlines() if "ctrsh" in line and line.startswith("-A")]
        assert ours and all('--comment "ctrsh:test-web"' in r or '--comment "ctrsh:bridge/ctrsh0"' in r for r in ours)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143


def test_container_reaches_host_and_outside_through_nat(
    ctrsh: Ctrsh, forward_drop: None, outside: str, host_server: int
) -> None:
    script = (
        "ip -o -4 addr show dev eth0 | awk '{print $4}'; ip route; "
        "busybox ping -c 1 -W 5 10.88.0.1 >/dev/null && echo ping-gateway-ok; "
        f"nc -w 5 10.88.0.1 {host_server} </dev/null; nc -w 5 {OUTSIDE_PEER} 9999 </dev/null"
    )
    r = ctrsh.run("apply", "-q", ctrsh.recipe(bridge_recipe("test-nat", script)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "10.88.0.2/16",
        "default via 10.88.0.1 dev eth0 ",
        "10.88.0.0/16 dev eth0 scope link  src 10.88.0.2 ",
        "ping-gateway-ok",
        "peer 10.88.0.2",  # the host sees the container's own address: no NAT on the bridge
        f"peer {OUTSIDE_HOST}",  # the outside host sees the host's address: MASQUERADE rewrote the source
    ]


def test_two_applies_at_once_get_different_addresses(ctrsh: Ctrsh) -> None:
    script = "ip -o -4 addr show dev eth0 | awk '{print $4}'; exec sleep 60"
    procs = [start(ctrsh, ctrsh.recipe(bridge_recipe(f"test-par{i}", script), f"par{i}.yaml")) for i in range(3)]
    try:
        addresses = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    assert len(set(addresses)) == 3 and all(a.startswith("10.88.0.") for a in addresses), addresses
    assert codes == [143, 143, 143], [p.stderr.read() for p in procs if p.stderr]


def test_fixed_address_and_brctl(ctrsh: Ctrsh) -> None:
    net = "{mode: bridge, bridge: ctrshtbr, subnet: 10.89.0.0/24, address: 10.89.0.77, bridge_tool: brctl}"
    r = ctrsh.run("apply", ctrsh.recipe(bridge_recipe("test-fixed", "ip -o -4 addr show dev eth0", net)))
    assert r.returncode == 0, r.stderr
    assert "inet 10.89.0.77/24" in r.stdout
    assert "brctl addbr" in r.stderr and "brctl addif ctrshtbr veth" in r.stderr


def test_killed_apply_then_destroy_leaves_nothing(ctrsh: Ctrsh) -> None:
    net = "{mode: bridge, publish: ['8081:80', '5353:53/udp'], bridge_tool: brctl}"
    proc = start(ctrsh, ctrsh.recipe(bridge_recipe("test-netkill", "echo ready; exec sleep 60", net)))
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.kill()  # SIGKILL: no teardown; the journal is all that is left
    proc.wait(timeout=30)
    assert "ctrsh:test-netkill" in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    # as if ctrsh had been killed after a rule's step ran and before its undo was journaled:
    sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.88.0.99", "-j", "RETURN",
       "-m", "comment", "--comment", "ctrsh:test-netkill")  # fmt: skip
    r = ctrsh.run("destroy", "test-netkill")
    assert r.returncode == 0, r.stderr
    assert "ctrsh-undo nat POSTROUTING -s 10.88.0.99/32" in r.stderr  # found by its tag, after the journal
    # the host snapshot (links, netns, addresses, routes, rules, sysctls, the registry) is checked by conftest


def test_a_bridge_ctrsh_did_not_make_survives(ctrsh: Ctrsh) -> None:
    sh("ip", "link", "add", "ctrshtmine", "type", "bridge")
    sh("ip", "addr", "add", "10.90.0.1/24", "dev", "ctrshtmine")
    sh("ip", "link", "set", "ctrshtmine", "up")
    sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    try:
        net = "{mode: bridge, bridge: ctrshtmine, subnet: 10.90.0.0/24}"
        script = "busybox ping -c 1 -W 5 10.90.0.1 >/dev/null && echo ok"
        r = ctrsh.run("apply", ctrsh.recipe(bridge_recipe("test-notmine", script, net)))
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
        links = subprocess.run(["ip", "-o", "addr", "show", "dev", "ctrshtmine"], capture_output=True, text=True)
        assert "10.90.0.1/24" in links.stdout  # still there, with its address
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == "1\n"  # ctrsh did not change it: left as is
    finally:
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
        sh("ip", "link", "delete", "ctrshtmine")


def test_exported_bridge_script_behaves_like_apply(ctrsh: Ctrsh, tmp_path: Path) -> None:
    recipe = ctrsh.recipe(bridge_recipe("test-netexport", "ip -o -4 addr show dev eth0 | awk '{print $4}'; ip route"))
    applied = ctrsh.run("apply", "-q", recipe)
    script = tmp_path / "run.sh"
    assert ctrsh.run("export", recipe, "-o", str(script)).returncode == 0
    exported = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=ctrsh.env, timeout=120)
    assert (exported.returncode, exported.stderr) == (0, "")
    assert exported.stdout == applied.stdout and applied.stdout.startswith("10.88.0.2/16\n")


def test_host_mode_shares_the_hosts_network(ctrsh: Ctrsh) -> None:
    recipe = bridge_recipe("test-hostmode", "readlink /proc/self/ns/net; hostname", "{mode: host}")
    r = ctrsh.run("apply", "-q", ctrsh.recipe(recipe))
    assert r.returncode == 0, r.stderr
    net, host = r.stdout.splitlines()
    assert net == subprocess.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True).stdout.strip()
    assert host == "test-hostmode"  # the uts namespace still isolates the hostname


def test_lost_race_for_an_address_retries_with_the_next(ctrsh: Ctrsh) -> None:
    """Deterministic race: the test holds the registry lock while apply waits at its lease step, and gives
    the address apply chose to another container; apply's claim fails, it rolls back and takes the next."""
    import fcntl
    import os

    state = Path(ctrsh.env["CTRSH_STATE_DIR"])
    made = not state.exists()
    state.mkdir(exist_ok=True)
    thief_dir, leases = state / "test-thief", state / "network" / "leases-ctrsh0"
    fd = os.open(state, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = start(ctrsh, ctrsh.recipe(bridge_recipe("test-race", "ip -o -4 addr show dev eth0 | awk '{print $4}'")))
    try:
        for _ in range(300):  # until apply has compiled (its steps have begun): the survey is behind it
            if (state / "test-race").exists():
                break
            time.sleep(0.05)
        thief_dir.mkdir()
        leases.mkdir(parents=True)
        (leases / "10.88.0.2").write_text("test-thief\n")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, err = proc.communicate(timeout=120)
    try:
        assert proc.returncode == 0, err
        assert out == "10.88.0.3/16\n"
        assert "10.88.0.2 is taken by container test-thief" in err
        assert "another container took that address or port meanwhile: allocating again" in err
        assert (leases / "10.88.0.2").read_text() == "test-thief\n"  # the other's lease is untouched
    finally:
        (leases / "10.88.0.2").unlink()
        leases.rmdir()
        leases.parent.rmdir()
        thief_dir.rmdir()
        if made:
            state.rmdir()


def test_container_mode_shares_a_running_containers_network(ctrsh: Ctrsh) -> None:
    """A pod of two applies: the second joins the first's network namespace and reaches it on 127.0.0.1."""
    serve = "mkdir /www && echo served-by-$(hostname) > /www/index.html && httpd -p 127.0.0.1:80 -h /www; echo ready; exec sleep 60"
    first = start(ctrsh, ctrsh.recipe(bridge_recipe("test-podmain", serve), "main.yaml"))
    try:
        assert first.stdout is not None and first.stdout.readline() == "ready\n"
        net = "{mode: container, container: test-podmain}"
        script = "wget -q -O- http://127.0.0.1/; hostname; ip -o -4 addr show dev eth0 | awk '{print $4}'"
        r = ctrsh.run("apply", "-q", ctrsh.recipe(bridge_recipe("test-podside", script, net), "side.yaml"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["served-by-test-podmain", "test-podside", "10.88.0.2/16"]
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143
    r = ctrsh.run("apply", "-q", ctrsh.recipe(bridge_recipe("test-podside", "true", net), "side.yaml"))
    assert r.returncode == 125 and f"/run/netns/{ctrsh.netns('test-podmain')}" in r.stderr  # the one to join is gone
