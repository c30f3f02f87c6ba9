"""/etc/hostname, /etc/hosts and /etc/resolv.conf: the container's own, as Docker makes them.

Written per container on the host (in its state dir, mode 0644) and
bind-mounted over the image's, inside the container's mount namespace. The
image is never changed, and every container of one image gets its own names.
"""

from __future__ import annotations

import ipaddress

from ..plan import Step
from . import Context

# $1 the dir, then pairs of (file name, its text): values never in the script text.
WRITE = """umask 022
mkdir "$1"; d=$1; shift
while [ $# -gt 0 ]; do printf "%s" "$2" >"$d/$1"; shift 2; done"""


def files(c: Context) -> list[tuple[str, str]]:
    """(name in /etc, text) for each file made."""
    out = []
    if c.hostname is not None:
        out.append(("hostname", f"{c.hostname}\n"))
    out.append(("hosts", own_hosts(c)))
    out.append(("resolv.conf", resolv_text(c.facts.resolv_conf, c.recipe.dns, "net" in c.namespaces)))
    return out


def mountpoints(c: Context) -> list[tuple[str, bool]]:
    return [(f"/etc/{name}", False) for name, _ in files(c)]


def hosts_text(hostname: str | None) -> str:
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if hostname is not None:
        # Debian's convention for a host without a fixed address; a container with its own
        # address (bridge networking) should name that one instead.
        short = hostname.split(".")[0]
        text += f"127.0.1.1\t{hostname}" + (f" {short}" if short != hostname else "") + "\n"
    return text


def own_hosts(c: Context) -> str:
    """In bridge mode the container's own lines name its address (as Docker's do), and the network
    phase appends the other containers on the bridge (see names.py); else Debian's 127.0.1.1."""
    if c.network.bridge is None:
        return hosts_text(c.hostname)
    return bridge_hosts_text(c.hostname, c.recipe.name, str(c.network.bridge.address))


def bridge_hosts_text(hostname: str | None, name: str, address: str) -> str:
    names = [hostname] if hostname else []
    if hostname and (short := hostname.split(".")[0]) != hostname:
        names.append(short)
    if name not in names:
        names.append(name)  # the others know it by its name: so does it
    return "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + f"{address}\t{' '.join(names)}\n"


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolv_text(host: str, dns: list[str] | None, own_net: bool) -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from another net namespace),
    or with the recipe's `dns` instead of the host's nameservers."""
    kept, dropped = [], []
    for line in host.splitlines():
        words = line.split()
        is_server = words[:1] == ["nameserver"] and len(words) > 1
        if is_server and (dns is not None or (own_net and is_loopback(words[1]))):
            dropped.append(words[1])
            continue
        kept.append(line)
    servers = [f"nameserver {a}" for a in dns or []]
    text = "\n".join([*servers, *kept]).strip("\n")
    if dns is None and dropped and not any(line.split()[:1] == ["nameserver"] for line in kept):
        text = (
            f"# ctrsh: the host's only nameservers ({', '.join(dropped)}) are on loopback, which the container's\n"
            "# own network namespace cannot reach; set `dns: [...]` in the recipe to name some.\n" + text
        )
    return text.rstrip("\n") + "\n" if text.strip() else ""


def steps(c: Context) -> list[Step]:
    etc = c.paths.etc
    pairs = [x for pair in files(c) for x in pair]
    if c.network.bridge is not None:  # the container's own lines, kept where it cannot change them (names.py)
        pairs += ["hosts.base", own_hosts(c)]
    out = [
        Step(
            "filesystem",
            ("sh", "-c", WRITE, "ctrsh-etc", etc, *pairs),
            f"The container's own /etc/{', '.join(n for n, _ in files(c))}: written in its state dir (mode 0644).",
        )
    ]
    for name, _ in files(c):
        out.append(
            Step(
                "filesystem",
                (*c.nsenter("mount"), "mount", "--bind", f"{etc}/{name}", f"{c.paths.rootfs}/etc/{name}"),
                f"/etc/{name}: this container's own, bound over the image's (which stays unchanged).",
            )
        )
    return out
