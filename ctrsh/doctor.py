"""`ctrsh doctor`: what this host has and lacks for ctrsh, with the Debian package for each gap.

Each check is a small function returning a Check; `checks()` runs them all. They only read
files and run `--version`, so doctor changes nothing on the host and runs without root
(it then says root is missing, and what it could not read).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from .facts import SAFE_PATH, CgroupFacts, detect_cgroups

UTIL_LINUX_MIN = (2, 38)  # unshare --mount=FILE with --propagation, setpriv --bounding-set, script --return


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str
    fix: str = ""  # how to get it: a package to install, a boot option
    required: bool = True  # False: only some recipes need it


# tool -> (Debian package, needed by every container?, what it is for)
TOOLS: dict[str, tuple[str, bool, str]] = {
    "unshare": ("util-linux", True, "creates the namespaces"),
    "nsenter": ("util-linux", True, "enters them for each step"),
    "setpriv": ("util-linux", True, "drops capabilities, sets no_new_privs"),
    "script": ("bsdutils", False, "a pty of its own for `terminal: true`"),
    "mount": ("mount", True, "mounts the rootfs, /proc, /dev, /sys"),
    "umount": ("mount", True, "teardown"),
    "pivot_root": ("util-linux", True, "swaps the container's root"),
    "ip": ("iproute2", True, "network namespaces"),
    "busybox": ("busybox-static", True, "the busybox image and the trusted tools after pivot_root"),
    "debootstrap": ("debootstrap", False, "Debian images"),
}

NAMESPACES = {"mnt": "mount", "uts": "uts", "ipc": "ipc", "pid": "pid", "net": "net", "cgroup": "cgroup",
              "user": "user", "time": "time"}  # fmt: skip
REQUIRED_NS = ("mnt", "uts", "ipc", "pid", "net")


def _run(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def tool(name: str) -> Check:
    package, required, why = TOOLS[name]
    path = shutil.which(name, path=SAFE_PATH)
    if path is None:
        return Check(f"tool {name}", False, f"missing ({why})", f"apt-get install {package}", required)
    detail = path
    if name == "unshare":
        m = re.search(r"util-linux (\d+)\.(\d+)", _run(path, "--version"))
        if m and (int(m[1]), int(m[2])) < UTIL_LINUX_MIN:
            want = ".".join(map(str, UTIL_LINUX_MIN))
            return Check("tool unshare", False, f"util-linux {m[1]}.{m[2]}, older than {want}",
                         "apt-get install util-linux (from Debian 12 or later)")  # fmt: skip
        detail += f" (util-linux {m[1]}.{m[2]})" if m else ""
    if name == "busybox" and not _is_static(path):
        return Check("tool busybox", False, f"{path} is dynamically linked", "apt-get install busybox-static")
    return Check(f"tool {name}", True, detail, required=required)


def _is_static(path: str) -> bool:
    from .preflight import is_static

    try:
        return is_static(path)
    except OSError:
        return False


def firewall() -> Check:
    """Bridge networking needs iptables (iptables-nft on Debian 12) or nft for NAT and published ports."""
    found = [t for t in ("iptables", "nft") if shutil.which(t, path=SAFE_PATH)]
    if found:
        return Check("tool iptables/nft", True, " ".join(found), required=False)
    return Check("tool iptables/nft", False, "missing (bridge networking: NAT, published ports)",
                 "apt-get install iptables", False)  # fmt: skip


def namespaces() -> list[Check]:
    out = []
    for nsfile, kind in NAMESPACES.items():
        ok = os.path.exists(f"/proc/self/ns/{nsfile}")
        fix = "" if ok else f"a kernel built with CONFIG_{kind.upper()}_NS (e.g. apt-get install linux-image-amd64)"
        out.append(Check(f"namespace {kind}", ok, "yes" if ok else "not in this kernel", fix, nsfile in REQUIRED_NS))
    return out


def user_namespaces() -> Check:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        limit = 0
    ok = limit > 0
    detail = f"max_user_namespaces {limit}"
    return Check("user namespaces", ok, detail, "" if ok else "sysctl -w user.max_user_namespaces=15000", False)


def overlayfs() -> Check:
    try:
        with open("/proc/filesystems") as f:
            known = any(line.split()[-1] == "overlay" for line in f if line.strip())
    except OSError:
        known = False
    module = os.path.exists(f"/lib/modules/{os.uname().release}/kernel/fs/overlayfs")
    if known:
        return Check("overlayfs", True, "yes")
    if module:
        return Check("overlayfs", True, "as a module, loaded on first use")
    return Check("overlayfs", False, "not in this kernel", "modprobe overlay, or apt-get install linux-image-amd64")


def cgroups(cg: CgroupFacts | None = None) -> list[Check]:
    cg = cg or detect_cgroups()
    if cg.version == 0:
        return [
            Check("cgroups", False, "no cgroup filesystem at /sys/fs/cgroup", "mount -t cgroup2 none /sys/fs/cgroup")
        ]
    have = [k for k, _ in cg.mounts]
    kind = "v2 (unified)" if cg.version == 2 else "v1 (a hierarchy per controller)"
    out = [Check("cgroups", True, f"{kind}: {' '.join(have) or 'no controllers'}")]
    wanted = ("cpu", "memory", "pids") + (("cpuacct", "devices", "freezer") if cg.version == 1 else ())
    for controller in wanted:
        ok = controller in have
        fix = "" if ok else f"enable the {controller} controller (kernel config, or cgroup_enable={controller})"
        needed = {"cpu": "resources.cpus and cpu_weight", "memory": "resources.memory",
                  "pids": "resources.pids", "cpuacct": "CPU usage", "devices": "the device allowlist",
                  "freezer": "stopping every process at once in teardown"}[controller]  # fmt: skip
        out.append(Check(f"cgroup {controller}", ok, "yes" if ok else f"missing ({needed})", fix, False))
    if cg.version == 2:
        out.append(Check("device cgroup", False, "v2: no stock tool loads the eBPF device filter; "
                         "ctrsh drops CAP_MKNOD and mounts the root nodev instead", required=False))  # fmt: skip
    if "memory" in have:
        out.append(Check("swap accounting", cg.swap, "yes" if cg.swap else "no (resources.memory_swap)",
                         "" if cg.swap else "boot with swapaccount=1", False))  # fmt: skip
    return out


def root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, "yes" if ok else "not root: apply, destroy need it", "" if ok else "run with sudo")


def checks() -> list[Check]:
    tools = [tool(t) for t in TOOLS]
    return [root(), *tools, firewall(), *namespaces(), user_namespaces(), overlayfs(), *cgroups()]


def render(results: list[Check]) -> str:
    width = max(len(c.what) for c in results)
    lines = []
    for c in results:
        mark = "ok" if c.ok else ("MISSING" if c.required else "missing")
        fix = f"  -> {c.fix}" if c.fix and not c.ok else ""
        lines.append(f"{mark:8} {c.what:{width}}  {c.detail}{fix}")
    gaps = [c for c in results if not c.ok and c.required]
    packages = sorted({m[1] for c in results if not c.ok and (m := re.fullmatch(r"apt-get install (\S+)", c.fix))})
    if packages:
        lines.append(f"# to install what is missing: apt-get install {' '.join(packages)}")
    lines.append("# ready: every container can run here" if not gaps else f"# not ready: {len(gaps)} required missing")
    return "\n".join(lines) + "\n"
