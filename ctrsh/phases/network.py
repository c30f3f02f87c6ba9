"""Phase network: configure the container's network namespace.

Modes: none (own namespace, only lo), host (no namespace: nothing to do here),
bridge (Docker's default): the commands of the container-networking tutorials —
a bridge with the gateway address, a veth pair whose host end joins the bridge
and whose other end moves into the container's namespace as eth0 with an
address and a default route, then forwarding and NAT with iptables.
"""

from __future__ import annotations

from .. import firewall, ipam, names
from ..netconfig import BridgeNet
from ..plan import Step
from . import Context


def steps(c: Context) -> list[Step]:
    if "net" not in c.namespaces:
        return []  # the host's network: nothing to set up
    lo = Step(
        "network",
        ("ip", "-n", c.paths.netns, "link", "set", "lo", "up"),
        "Bring up loopback: a new network namespace starts with lo down.",
    )
    if c.network.bridge is None:
        return [lo]
    return bridge_steps(c, c.network.bridge, lo)


def bridge_steps(c: Context, b: BridgeNet, lo: Step) -> list[Step]:
    name, ns, facts = c.recipe.name, c.paths.netns, c.facts
    state = facts.state_dir
    leases = ipam.leases_dir(state, b.bridge)
    out = [
        Step(
            "network",
            firewall.locked(facts, ipam.CLAIM, "ctrsh-claim", state, leases, name, str(b.address)),
            f"Lease {b.address} on {b.bridge} ({b.address_note}): a file naming this container, written under "
            f"a lock on {state}; fails if a live container holds it, so no two get the same address.",
            undo=firewall.locked(facts, ipam.RELEASE, "ctrsh-release", leases, name, str(b.address)),
        )
    ]
    if b.publish:
        ports = ipam.ports_dir(state)
        keys = [ipam.port_key(p.host_port, p.proto) for p in b.publish]
        out.append(
            Step(
                "network",
                firewall.locked(facts, ipam.CLAIM, "ctrsh-claim", state, ports, name, *keys),
                "Claim the published host ports the same way: two containers cannot both take one.",
                undo=firewall.locked(facts, ipam.RELEASE, "ctrsh-release", ports, name, *keys),
            )
        )
    tool = "`brctl addbr`" if b.tool == "brctl" else "`ip link add … type bridge`"
    out.append(
        firewall.shared(
            facts, f"bridge-{b.bridge}", name, firewall.BRIDGE[b.tool],
            f"The bridge {b.bridge}, a virtual switch for the containers, with the gateway {b.gateway} on it: "
            f"made ({tool}, address, up) unless it exists; shared, so the last container out deletes it, "
            "and only if ctrsh made it.",
            b.bridge, f"{b.gateway}/{b.subnet.prefixlen}", str(b.subnet),
        )
    )  # fmt: skip
    h, p = b.host_veth, b.peer_veth
    attach = ("brctl", "addif", b.bridge, h) if b.tool == "brctl" else ("ip", "link", "set", h, "master", b.bridge)
    out += [
        Step(
            "network",
            ("ip", "link", "add", h, "type", "veth", "peer", "name", p),
            "A veth pair: a virtual cable, whatever goes in one end comes out of the other.",
            undo=("sh", "-euc", firewall.LINK_UNDO, "ctrsh-undo", h),  # deleting one end deletes both
        ),
        Step("network", attach, f"Plug the host end into the bridge {b.bridge}."),
        Step("network", ("ip", "link", "set", h, "up"), "Bring the host end up."),
        Step("network", ("ip", "link", "set", p, "netns", ns), "Move the other end into the container's namespace."),
        lo,
        Step("network", ("ip", "-n", ns, "link", "set", p, "name", "eth0"), "Rename it eth0, as a container expects."),
        Step("network", ("ip", "-n", ns, "link", "set", "eth0", "up"), "Bring eth0 up."),
        Step(
            "network",
            ("ip", "-n", ns, "addr", "add", b.cidr, "dev", "eth0"),
            "The container's address: on eth0, not on the bridged host end (that end is a switch port).",
        ),
        Step(
            "network",
            ("ip", "-n", ns, "route", "add", "default", "via", str(b.gateway)),
            "Everything off the subnet goes to the gateway: the host, through the bridge.",
        ),
        firewall.shared(
            facts, "ip_forward", name, firewall.SYSCTL,
            "Let the host route packets between interfaces (bridge <-> the outside). Shared by all containers; "
            "the last one out restores the old value, if ctrsh changed it.",
            "net.ipv4.ip_forward", "1",
        ),
        firewall.shared_rule(
            facts, b.bridge, name, "masquerade", "nat", "-A", "POSTROUTING",
            "-s", str(b.subnet), "!", "-o", b.bridge, "-j", "MASQUERADE",
            why="Outbound NAT: packets from the subnet leaving by any other interface get the host's address "
            "as source, so replies find their way back. Shared by the bridge's containers.",
        ),
        firewall.shared_rule(
            facts, b.bridge, name, "forward-out", "filter", "-I", "FORWARD", "-i", b.bridge, "-j", "ACCEPT",
            why="Forward what the containers send (needed where the FORWARD policy is DROP).",
        ),
        firewall.shared_rule(
            facts, b.bridge, name, "forward-back", "filter", "-I", "FORWARD", "-o", b.bridge,
            "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT",
            why="Forward the replies to them (under a DROP policy, new connections in only reach published ports).",
        ),
    ]  # fmt: skip
    out.append(names.step(facts, b.bridge, name))
    out += publish_steps(c, b)
    return out


def publish_steps(c: Context, b: BridgeNet) -> list[Step]:
    name, out = c.recipe.name, []
    for p in b.publish:
        to = f"{b.address}:{p.port}"
        match = ("-p", p.proto, "--dport", str(p.host_port))
        local = ("-m", "addrtype", "--dst-type", "LOCAL")
        out += [
            firewall.rule(
                name, "nat", "-A", "PREROUTING", *local, *match, "-j", "DNAT", "--to-destination", to,
                why=f"Publish host port {p.host_port}/{p.proto}: packets from other hosts to any of this host's "
                f"addresses go to {to}. Only to local addresses: traffic passing through keeps its destination.",
            ),
            firewall.rule(
                name, "nat", "-A", "OUTPUT", *local, *match, "-j", "DNAT", "--to-destination", to,
                why="The same for the host's own connections (127.0.0.1, its own addresses): "
                "locally made packets skip PREROUTING.",
            ),
            firewall.rule(
                name, "filter", "-I", "FORWARD", "-d", str(b.address), "-o", b.bridge,
                "-p", p.proto, "--dport", str(p.port), "-j", "ACCEPT",
                why="Let new connections to the published port through where the FORWARD policy is DROP.",
            ),
        ]  # fmt: skip
    if b.publish:
        out += [
            firewall.shared_rule(
                c.facts, b.bridge, name, "no-loopback-in", "raw", "-I", "PREROUTING", "-i", b.bridge,
                "-d", "127.0.0.0/8", "-j", "DROP",
                why=f"route_localnet (next) would also let packets from {b.bridge} to 127.0.0.0/8 in: "
                "drop them first, or a container could reach the host's loopback-only services.",
            ),
            firewall.shared(
                c.facts, f"route_localnet-{b.bridge}", name, firewall.SYSCTL,
                f"127.0.0.1:PORT: a packet from 127.0.0.1 may leave by {b.bridge} only with route_localnet "
                "(else the kernel drops it as martian). The last user restores the old value.",
                f"net.ipv4.conf.{b.bridge}.route_localnet", "1",
            ),
        ]  # fmt: skip
        for p in b.publish:
            out.append(
                firewall.rule(
                    name, "nat", "-A", "POSTROUTING", "-s", "127.0.0.0/8", "-d", str(b.address),
                    "-p", p.proto, "--dport", str(p.port), "-j", "MASQUERADE",
                    why="...and the container could not answer 127.0.0.1 (its own lo): give such packets "
                    f"the gateway's address, {b.gateway}, as source.",
                )
            )  # fmt: skip
    return out
