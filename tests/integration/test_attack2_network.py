"""Attack 2, networking: what a recipe's published ports do to the host's own services.

Each test FAILS while the hole it names exists (see attack2_notes.md).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Ctrsh
from .test_network import bridge_recipe, host_server, sh, start  # noqa: F401  (fixture)


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


ARP_C = Path(__file__).with_name("attack2_arp.c")


def neigh(ip: str) -> str:
    out = subprocess.run(["ip", "neigh", "show", ip], capture_output=True, text=True).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else ""


@pytest.mark.xfail(
    strict=True, reason="known gap, as in Docker: NET_RAW is kept and the bridge has no ARP/IP anti-spoofing filter"
)
def test_a_container_cannot_take_over_anothers_address(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """MEDIUM. Containers keep CAP_NET_RAW (Docker's default too) and the bridge has no anti-spoofing
    (no ebtables/nft bridge rule tying a veth to its MAC and leased address): container B sends
    ARP replies "A's address is at B's MAC" and the host's neighbour entry for A now points at B:
    the host's traffic to A (published ports included) goes to B."""
    tools = tmp_path / "tools"
    tools.mkdir()
    subprocess.run(["gcc", "-static", "-O", "-o", str(tools / "arp"), str(ARP_C)], check=True)
    go = tmp_path / "go"
    go.mkdir()
    go_mount = {"type": "bind", "source": str(go), "target": "/go"}
    tools_mount = {"type": "bind", "source": str(tools), "target": "/t"}
    wait = "while [ ! -e /go/stop ]; do sleep 0.1; done"

    def with_mounts(text: str, *mounts: dict[str, str]) -> str:
        return text.replace("process:", f"mounts: {json.dumps(list(mounts))}\nprocess:")

    victim_text = with_mounts(bridge_recipe("test-a2-victim", wait), go_mount)
    procs = [start(ctrsh, ctrsh.recipe(victim_text, "victim.yaml"))]
    try:
        ip = ""
        for _ in range(300):  # until the victim has its address (bounds the wait only)
            got = subprocess.run(
                ["ip", "netns", "exec", ctrsh.netns("test-a2-victim"), "ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                capture_output=True, text=True,
            )  # fmt: skip
            if "inet " in got.stdout:
                ip = got.stdout.split("inet ")[1].split("/")[0]
                break
            time.sleep(0.1)
        assert ip, "the victim never got an address"
        subprocess.run(["busybox", "ping", "-c", "1", "-W", "5", ip], check=True, capture_output=True)
        before = neigh(ip)
        assert before
        script = f"sleep 2; /t/arp {ip} && touch /go/sent; {wait}"
        text = with_mounts(bridge_recipe("test-a2-spoof", script), go_mount, tools_mount)
        procs.append(start(ctrsh, ctrsh.recipe(text, "spoof.yaml")))
        for _ in range(300):
            if (go / "sent").exists() or procs[1].poll() is not None:
                break
            time.sleep(0.1)
        assert (go / "sent").exists(), "the spoofing container never sent its ARP replies"
        after = neigh(ip)
        assert after == before, f"the host now sends {ip}'s traffic to {after} (was {before}): the other container"
    finally:
        (go / "stop").touch()
        for p in procs:
            p.communicate(timeout=60)


UDP_C = Path(__file__).with_name("attack2_udp.c")


def test_a_container_cannot_reach_the_hosts_loopback_services(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """HIGH. A published port sets net.ipv4.conf.BRIDGE.route_localnet=1 (for 127.0.0.1:PORT), and that
    lets anything on the bridge send packets TO 127.0.0.1 (Kubernetes' CVE-2020-8558): a container
    frames a datagram for 127.0.0.1 to the gateway's MAC and the host delivers it to a service bound
    to loopback only (here UDP; a resolver on 127.0.0.53, a local admin API...)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    subprocess.run(["gcc", "-static", "-O", "-o", str(tools / "udp"), str(UDP_C)], check=True)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(30)
    port = listener.getsockname()[1]
    mounts = json.dumps([{"type": "bind", "source": str(tools), "target": "/t"}])
    # the gateway's MAC from the container's own ARP cache (the bridge's MAC changes as ports join)
    script = (
        "ip=$(ip -4 -o addr show dev eth0 | sed 's/.*inet \\([0-9.]*\\).*/\\1/'); "
        "gw=$(ip route | awk '/default/ {print $3}'); ping -c 1 -W 2 $gw >/dev/null; "
        "mac=$(awk -v g=$gw '$1 == g {print $4}' /proc/net/arp); "
        f"/t/udp $mac $ip {port}"
    )
    text = bridge_recipe("test-a2-localnet", script, "{mode: bridge, publish: ['18089:80']}")
    text = text.replace("process:", f"mounts: {mounts}\nprocess:")
    proc = None
    try:
        proc = start(ctrsh, ctrsh.recipe(text))
        try:
            data, peer = listener.recvfrom(100)
        except TimeoutError:
            data, peer = b"", ("", 0)
        assert data != b"from-the-container", f"the container reached 127.0.0.1:{port} on the host (from {peer[0]})"
    finally:
        listener.close()
        if proc is not None:
            proc.communicate(timeout=60)


LAN_NS = "ctrsh-a2-lanhost"


@pytest.mark.xfail(strict=True, reason="known gap: a bridge ctrsh did not make is used as it is")
def test_a_bridge_ctrsh_did_not_make_is_not_joined(ctrsh: Ctrsh) -> None:
    """MEDIUM. `network.bridge` may name a bridge ctrsh did not make (the host's LAN bridge): the
    BRIDGE script skips creating it, and `ipam.host_routes(bridge)` drops that bridge's own routes
    from the overlap check, so the LAN's subnet passes; ipam knows only ctrsh's leases and hands
    out an address a LAN host already has (here 192.168.77.2), and adds FORWARD -i BRIDGE -j ACCEPT
    for the whole LAN. Expected: refused, or at least never an address in use there."""
    sh("ip", "link", "add", "ctrshtlan", "type", "bridge")
    sh("ip", "addr", "add", "192.168.77.1/24", "dev", "ctrshtlan")
    sh("ip", "link", "set", "ctrshtlan", "up")
    sh("ip", "netns", "add", LAN_NS)
    try:
        sh("ip", "link", "add", "ctrshtlanh", "type", "veth", "peer", "name", "eth0", "netns", LAN_NS)
        sh("ip", "link", "set", "ctrshtlanh", "master", "ctrshtlan", "up")
        sh("ip", "-n", LAN_NS, "addr", "add", "192.168.77.2/24", "dev", "eth0")
        sh("ip", "-n", LAN_NS, "link", "set", "eth0", "up")
        script = "ip -4 -o addr show dev eth0"
        net = "{mode: bridge, bridge: ctrshtlan, subnet: 192.168.77.0/24}"
        r = ctrsh.run("apply", "-q", ctrsh.recipe(bridge_recipe("test-a2-lan", script, net)))
        assert r.returncode == 2 or "192.168.77.2/" not in r.stdout, (
            f"the container joined a bridge ctrsh did not make, with a LAN host's address: {r.stdout.strip()}"
        )
    finally:
        subprocess.run(["ip", "link", "delete", "ctrshtlan"], check=False)
        subprocess.run(["ip", "link", "delete", "ctrshtlanh"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "delete", LAN_NS], check=False)
