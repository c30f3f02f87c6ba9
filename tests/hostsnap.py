"""A snapshot of everything a container run could leave behind on the host."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    return subprocess.run(argv, capture_output=True, text=True).stdout


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        # mount point, fs type, source, options: not the ids, which change on any remount
        return sorted(" ".join(line.split()[4:6] + line.split(" - ")[1].split()[:2]) for line in f)


def _tree(root: str, depth: int) -> list[str]:
    out = []
    for dirpath, dirnames, files in os.walk(root):
        level = dirpath[len(root) :].count("/")
        if level >= depth:
            dirnames[:] = []
        out += [os.path.join(dirpath, n) for n in dirnames + files]
    return sorted(out)


def _cgroups(state_dir: str) -> list[str]:
    """The cgroups of the ctrsh instance of this state dir: its parent cgroup (named for the state
    dir) wherever it is found in any hierarchy, with everything below it. Other cgroups on the
    machine (other agents', systemd's) come and go and are not this test's to compare."""
    from ctrsh.facts import CGROUP_ROOT, Facts
    from ctrsh.phases.cgroups import parent_name

    ours = parent_name(Facts(state_dir=os.path.normpath(state_dir)))
    out = []
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        depth = dirpath[len(CGROUP_ROOT) :].count("/")
        if os.path.basename(dirpath) == ours:
            out += [dirpath] + [os.path.join(d, n) for d, names, _ in os.walk(dirpath) for n in names]
            dirnames[:] = []
        elif depth >= 4:
            dirnames[:] = []
    return sorted(out)


def _firewall() -> str:
    rules = _run("iptables-save") + _run("ip6tables-save")
    rules = "\n".join(line for line in rules.splitlines() if not line.startswith("#"))
    return re.sub(r"\[\d+:\d+\]", "", rules) + _run("nft", "list", "ruleset")


def _processes(marker: str) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and int(pid) != os.getpid():
            out.append(cmd)
    return sorted(out)


def _data_residue(data_dir: str) -> list[str]:
    """The data dir keeps its caches (published images with their .lock and .source, the /dev
    template), the empty containers/ and volumes/ dirs; anything else, such as a container's
    writable layer, a build's work dir or a named volume, is residue."""
    ls = lambda d: sorted(os.listdir(d)) if os.path.isdir(d) else []  # noqa: E731
    images = [f"images/{n}" for n in ls(f"{data_dir}/images") if ".tmp-" in n or ".rm-" in n or ".use-" in n]
    layers = [f"containers/{n}" for n in ls(f"{data_dir}/containers")]
    volumes = [f"volumes/{n}" for n in ls(f"{data_dir}/volumes")]
    kept = ("images", "containers", "volumes")
    return (
        [n for n in ls(data_dir) if n not in kept and not (n.startswith("dev-") and ".tmp-" not in n)]
        + images
        + layers
        + volumes
    )


def _sysctls() -> dict[str, str]:
    """The sysctls bridge networking changes: ip_forward, and route_localnet of every interface."""
    paths = ["/proc/sys/net/ipv4/ip_forward"]
    conf = "/proc/sys/net/ipv4/conf"
    paths += [f"{conf}/{i}/route_localnet" for i in sorted(os.listdir(conf))] if os.path.isdir(conf) else []
    out = {}
    for path in paths:
        try:
            with open(path) as f:
                out[path] = f.read().strip()
        except OSError:
            continue
    return out


def snapshot(state_dir: str, data_dir: str) -> dict[str, object]:
    return {
        "mounts": _mounts(),
        "links": sorted(line.split(":")[1].strip() for line in _run("ip", "-o", "link").splitlines()),
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "cgroups": _cgroups(state_dir),
        "firewall": _firewall(),
        "addresses": sorted(line.split("\\")[0] for line in _run("ip", "-o", "addr").splitlines()),
        "routes": sorted(_run("ip", "route").splitlines()),
        "sysctls": _sysctls(),
        "hostname": socket.gethostname(),
        "state dir": _tree(state_dir, 9),
        "data dir": _data_residue(data_dir),
        "default dirs": _tree("/run/ctrsh", 2) + _tree("/var/lib/ctrsh", 1),
        "processes": _processes(state_dir),
    }
