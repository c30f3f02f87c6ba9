"""The recipe's `network:` section resolved against the namespaces and the host facts. Pure."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from . import ipam
from .errors import Problem
from .facts import Facts, Paths
from .recipe import Namespace, Network, NetworkMode, Recipe, parse_publish

DEFAULT_BRIDGE, DEFAULT_SUBNET = ipam.DEFAULT_BRIDGE, ipam.DEFAULT_SUBNET
BRIDGE_ONLY = ("bridge", "subnet", "address", "publish", "bridge_tool")


@dataclass(frozen=True)
class Publish:
    host_port: int
    port: int
    proto: str  # tcp or udp


@dataclass(frozen=True)
class BridgeNet:
    """Everything the network phase needs for mode bridge."""

    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    address: ipaddress.IPv4Address
    address_note: str  # how the address was chosen, for the plan's why
    publish: tuple[Publish, ...]
    tool: str  # ip or brctl
    host_veth: str  # the host end of the veth pair (<= 15 characters)
    peer_veth: str  # the container end's name until it is renamed eth0 inside

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.subnet.prefixlen}"


@dataclass(frozen=True)
class NetConfig:
    mode: NetworkMode
    bridge: BridgeNet | None = None
    join: str | None = None  # mode container: the `ip netns` name of the container whose network is shared


def veth_names(paths: Paths) -> tuple[str, str]:
    """Unique per container (from its netns name), at most 15 characters: IFNAMSIZ."""
    digest = hashlib.sha256(paths.netns.encode()).hexdigest()[:10]
    return f"veth{digest}", f"ceth{digest}"


def resolve(
    recipe: Recipe, facts: Facts, kinds: frozenset[Namespace]
) -> tuple[frozenset[Namespace], NetConfig, list[Problem]]:
    """The effective namespaces and network; problems point at the recipe's lines."""
    net = recipe.network
    problems: list[Problem] = []
    explicit = recipe.namespaces is not None
    ns_line = recipe.positions.get("namespaces", (1, 1))[0]
    if net is None:  # no section: as before, the namespaces list decides (no net: the host's network)
        return kinds, NetConfig("none" if "net" in kinds else "host"), problems
    mode = net.mode
    if net.container is not None and mode != "container":
        problems.append(
            recipe.problem("network.container", f"network.container: only for mode: container (not {mode!r})")
        )
    if mode == "container":
        if net.container is None:
            problems.append(recipe.problem("network.mode", "mode 'container' needs `container: NAME`, the one to join"))
        elif net.container == recipe.name:
            problems.append(recipe.problem("network.container", "network.container: a container cannot join itself"))
        if explicit and "net" in kinds:
            problems.append(
                recipe.problem(
                    "network.mode",
                    f"mode 'container' uses another container's network, but 'namespaces' (line {ns_line}) asks "
                    "for 'net'; remove 'net' there",
                )
            )
        for key in BRIDGE_ONLY:
            if getattr(net, key) is not None:
                msg = f"network.{key}: only for mode: bridge (not {mode!r})"
                problems.append(recipe.problem(f"network.{key}", msg))
        join = Paths(facts, net.container).netns if net.container else None
        return kinds - {"net"}, NetConfig(mode, join=join), problems
    if mode == "host":
        if explicit and "net" in kinds:
            problems.append(
                recipe.problem(
                    "network.mode",
                    f"mode 'host' uses the host's network, but 'namespaces' (line {ns_line}) asks for 'net'; "
                    "remove 'net' there",
                )
            )
        kinds = kinds - {"net"}
    elif "net" not in kinds:
        problems.append(
            recipe.problem(
                "network.mode",
                f"mode {mode!r} needs the 'net' namespace, which 'namespaces' (line {ns_line}) leaves out; "
                "add 'net' there, or use mode: host",
            )
        )
    if mode != "bridge":
        for key in BRIDGE_ONLY:
            if getattr(net, key) is not None:
                problems.append(
                    recipe.problem(f"network.{key}", f"network.{key}: only for mode: bridge (not {mode!r})")
                )
        return kinds, NetConfig(mode), problems
    bridge, more = _bridge(recipe, net, facts)
    return kinds, NetConfig(mode, bridge), problems + more


def _bridge(recipe: Recipe, net: Network, facts: Facts) -> tuple[BridgeNet | None, list[Problem]]:
    problems: list[Problem] = []
    name = net.bridge or DEFAULT_BRIDGE
    subnet = ipaddress.IPv4Network(net.subnet or DEFAULT_SUBNET)
    gw = ipam.gateway(subnet)
    nf = facts.network
    if nf.subnet is not None and nf.subnet != str(subnet):
        problems.append(
            recipe.problem(
                "network.subnet" if net.subnet else "network",
                f"bridge {name!r} is in use by other containers with subnet {nf.subnet}, not {subnet}",
            )
        )
    for dest, dev in nf.routes:
        if subnet.overlaps(ipaddress.IPv4Network(dest)):
            problems.append(
                recipe.problem(
                    "network.subnet" if net.subnet else "network",
                    f"subnet {subnet} overlaps the host's route to {dest} (dev {dev}): pick another subnet",
                )
            )
    others = {addr: who for addr, who in nf.leases if who != recipe.name}
    mine = [addr for addr, who in nf.leases if who == recipe.name]

    def bad(msg: str) -> None:
        problems.append(recipe.problem("network.address", f"network.address: {msg}"))

    if net.address is not None:
        address = ipaddress.IPv4Address(net.address)
        note = "the recipe's fixed address"
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            bad(f"{address} is not a host of {subnet}")
        elif address == gw:
            problems.append(
                recipe.problem("network.address", f"network.address: {address} is the gateway (the bridge's)")
            )
        elif str(address) in others:
            problems.append(
                recipe.problem(
                    "network.address", f"network.address: {address} is taken by container {others[str(address)]!r}"
                )
            )
    elif mine:
        address, note = ipaddress.IPv4Address(mine[0]), "already leased to this container"
    else:
        found = ipam.choose(subnet, set(others))
        if found is None:
            problems.append(recipe.problem("network", f"no free address left in {subnet}"))
            found = gw
        address = found
        note = (
            "the next free address in the registry now"
            if nf.readable
            else "a guess: the registry is not readable without root, so apply may choose another"
        )
    taken_ports = dict(nf.ports)
    publish = []
    for i, item in enumerate(net.publish or []):
        parsed = parse_publish(item)
        assert parsed is not None  # the recipe loader checked the form
        p = Publish(*parsed)
        holder = taken_ports.get(ipam.port_key(p.host_port, p.proto))
        if not holder and ipam.port_key(p.host_port, p.proto) in nf.listening:
            problems.append(
                recipe.problem(
                    f"network.publish[{i}]",
                    f"network.publish[{i}]: host port {p.host_port}/{p.proto} is in use by a process on this host "
                    "(publishing it would take its traffic); choose another host port",
                )
            )
        elif holder and holder != recipe.name:
            problems.append(
                recipe.problem(
                    f"network.publish[{i}]",
                    f"network.publish[{i}]: host port {p.host_port}/{p.proto} is published by container {holder!r}",
                )
            )
        publish.append(p)
    host_veth, peer_veth = veth_names(Paths(facts, recipe.name))
    return (
        BridgeNet(name, subnet, gw, address, note, tuple(publish), net.bridge_tool or "ip", host_veth, peer_veth),
        problems,
    )
