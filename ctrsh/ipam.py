"""Address and port allocation for bridge networking, and ctrsh's network registry.

The registry is a directory tree in ctrsh's state dir, changed only under an
flock(2) on the state dir itself (the dir every container already needs, so no
lock file is left behind):

    STATE/network/leases-BRIDGE/10.88.0.2   a lease: contains the container's name
    STATE/network/ports/tcp-8080            a published host port: the container's name
    STATE/network/KEY/users/NAME            a shared piece (bridge, ip_forward, a rule): its users
    STATE/network/KEY/made                  ctrsh made or changed it (for a sysctl: the old value)

How an address is allocated, keeping compile pure and plan/apply/export the same:
`survey` reads the registry before compiling (a host fact, like the cgroup
version); compile picks the first free address (`choose`, pure) and puts it in
the plan; the plan's first network step *claims* it — a lease file written under
the lock, failing if a live container holds it — with an undo that removes it.
So the allocation is journaled like any step, `destroy` after a kill releases
it, and the exported script claims the same way. Two applies at once may both
pick the same address; the loser's claim fails before anything else in the
network was touched, it rolls back, and `apply` surveys and compiles again
(cli.apply), getting the next one. A lease whose holder's state dir is gone
(its ctrsh was killed before it could be destroyed, and the dir was removed)
counts as free.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager

from .facts import Facts, NetworkFacts, Paths
from .plan import Argv, Plan
from .recipe import Recipe

DEFAULT_BRIDGE, DEFAULT_SUBNET = "ctrsh0", "10.88.0.0/16"


def registry(state_dir: str) -> str:
    return f"{state_dir}/network"


def leases_dir(state_dir: str, bridge: str) -> str:
    return f"{registry(state_dir)}/leases-{bridge}"


def ports_dir(state_dir: str) -> str:
    return f"{registry(state_dir)}/ports"


def shared_dir(state_dir: str, key: str) -> str:
    return f"{registry(state_dir)}/{key}"


def port_key(host_port: int, proto: str) -> str:
    return f"{proto}-{host_port}"


@contextmanager
def locked(state_dir: str) -> Iterator[None]:
    """The registry's lock: the same flock(2) the plan's steps take with flock(1)."""
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claims(facts: Facts, directory: str) -> tuple[tuple[str, str], ...]:
    """(key, holder) of the claims in directory whose holder still has its state dir."""
    out = []
    for key in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        try:
            with open(f"{directory}/{key}") as f:
                holder = f.read().strip()
        except OSError:
            continue
        if holder and os.path.isdir(Paths(facts, holder).state):
            out.append((key, holder))
    return tuple(out)


def survey(facts: Facts, bridge: str) -> NetworkFacts:
    """Read the registry for this bridge. Without the lock: apply's claim step re-checks under it."""
    state = facts.state_dir
    reg = shared_dir(state, f"bridge-{bridge}")
    try:
        if os.path.lexists(state):
            os.listdir(state)  # isdir() below says False, not "denied", where we may not look: ask first
        if os.path.lexists(registry(state)):
            os.listdir(registry(state))
        leases = _claims(facts, leases_dir(state, bridge))
        ports = _claims(facts, ports_dir(state))
        subnet = None
        if os.path.isdir(f"{reg}/users") and os.listdir(f"{reg}/users") and os.path.exists(f"{reg}/subnet"):
            with open(f"{reg}/subnet") as f:
                subnet = f.read().strip() or None
    except PermissionError:
        return NetworkFacts(readable=False)
    return NetworkFacts(
        readable=True, leases=leases, ports=ports, subnet=subnet, routes=host_routes(bridge), listening=listening()
    )


def listening() -> tuple[str, ...]:
    """Ports a host process has bound (TCP in LISTEN, any bound UDP), as port_key()s, from /proc/net:
    publishing one of them would silently take its traffic from the host's service (a DNAT wins)."""
    keys = set()
    for proto, files in (("tcp", ("tcp", "tcp6")), ("udp", ("udp", "udp6"))):
        for name in files:
            try:
                with open(f"/proc/net/{name}") as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                fields = row.split()
                if len(fields) > 3 and (proto == "udp" or fields[3] == "0A"):  # 0A: TCP_LISTEN
                    keys.add(port_key(int(fields[1].rsplit(":", 1)[1], 16), proto))
    return tuple(sorted(keys))


def host_routes(bridge: str) -> tuple[tuple[str, str], ...]:
    """The host's IPv4 routes (main table, /proc/net/route), without the default and the bridge's own."""
    out = []
    try:
        with open("/proc/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[0] == bridge:
            continue
        dest, mask = (ipaddress.IPv4Address(int(x, 16).to_bytes(4, "little")) for x in (fields[1], fields[7]))
        if int(mask):
            out.append((str(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)), fields[0]))
    return tuple(out)


def gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return subnet.network_address + 1


def choose(subnet: ipaddress.IPv4Network, taken: set[str]) -> ipaddress.IPv4Address | None:
    """The first address of the subnet after the gateway that nobody holds (pure)."""
    gw = gateway(subnet)
    for address in subnet.hosts():
        if address != gw and str(address) not in taken:
            return address
    return None


# The claim and release scripts run under `flock STATE_DIR sh -euc SCRIPT`.
# $1 state dir, $2 claims dir, $3 this container, then the keys (addresses, ports).
CLAIM = """state=$1 dir=$2 me=$3
shift 3
mkdir -p "$dir"
for key; do  # held by a container that still exists: fail, nothing claimed
  if [ -e "$dir/$key" ]; then
    holder=$(cat "$dir/$key")
    if [ "$holder" != "$me" ] && [ -d "$state/$holder" ]; then
      echo "$key is taken by container $holder" >&2
      exit 75
    fi
  fi
done
for key; do echo "$me" > "$dir/$key"; done
"""

# $1 claims dir, $2 this container, then the keys. Only removes what this container holds.
RELEASE = """dir=$1 me=$2
shift 2
for key; do
  if [ "$(cat "$dir/$key" 2>/dev/null)" = "$me" ]; then rm -f "$dir/$key"; fi
done
rmdir "$dir" "${dir%/*}" 2>/dev/null || true
"""


def survey_for(recipe: Recipe, facts: Facts) -> Facts:
    """Facts with the registry's view of the recipe's bridge (only mode bridge needs it)."""
    net = recipe.network
    if net is None or net.mode != "bridge":
        return facts
    return dataclasses.replace(facts, network=survey(facts, net.bridge or DEFAULT_BRIDGE))


def _claim_steps(plan: Plan) -> list[tuple[str, str, tuple[str, ...]]]:
    """(claims dir, container, keys) of each claim step in the plan."""
    out = []
    for step in plan.steps:
        a = step.argv
        if len(a) > 9 and a[0] == "flock" and a[5] == "ctrsh-claim":
            out.append((a[7], a[8], tuple(a[9:])))
    return out


def lost_race(plan: Plan, facts: Facts) -> bool:
    """Did another container claim one of this plan's addresses or ports after we surveyed?"""
    for directory, me, keys in _claim_steps(plan):
        for key, holder in _claims(facts, directory):
            if key in keys and holder != me:
                return True
    return False


def leftover_releases(facts: Facts, name: str) -> list[Argv]:
    """Release commands for claims `name` still holds (its ctrsh was killed between claiming and
    journaling): for `destroy`, which adds those its journal lacks."""
    from .firewall import locked

    reg = registry(facts.state_dir)
    out: list[Argv] = []
    dirs = [d for d in sorted(os.listdir(reg)) if d.startswith("leases-") or d == "ports"] if os.path.isdir(reg) else []
    for d in dirs:
        keys = [k for k, holder in _claims(facts, f"{reg}/{d}") if holder == name]
        if keys:
            out.append(locked(facts, RELEASE, "ctrsh-release", f"{reg}/{d}", name, *keys))
    return out


def leftover_network(facts: Facts, name: str) -> list[Argv]:
    """For `destroy`, after the journal's undos: what is still there of the container's network, because
    a step ran but ctrsh was killed before journaling its undo — its veth (the name is fixed by the
    container's) and every rule tagged with its name."""
    import shutil
    import subprocess

    from .firewall import LINK_UNDO, RULE_UNDO
    from .netconfig import veth_names

    out: list[Argv] = []
    host_veth, _ = veth_names(Paths(facts, name))
    ip = shutil.which("ip")
    if ip and subprocess.run([ip, "link", "show", "dev", host_veth], capture_output=True).returncode == 0:
        out.append(("sh", "-euc", LINK_UNDO, "ctrsh-undo", host_veth))
    if shutil.which("iptables-save"):
        table = ""
        for line in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and f"ctrsh:{name}" in line:
                _, chain, *spec = shlex.split(line)
                tags = [spec[i + 1] for i, a in enumerate(spec[:-1]) if a == "--comment"]
                if tags == [f"ctrsh:{name}"]:
                    out.append(("sh", "-euc", RULE_UNDO, "ctrsh-undo", table, chain, *spec))
    return out
