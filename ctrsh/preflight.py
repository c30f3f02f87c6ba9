"""Checks before `apply` runs anything: root, and every tool the plan calls."""

from __future__ import annotations

import os
import shutil
import struct

from .errors import CtrshError, UsageError
from .facts import Facts, Paths
from .plan import Argv, Plan
from .safepath import SAFE_PATH

# Debian package for each tool a plan may call, for the "install X" hint.
PACKAGES = {
    "ip": "iproute2",
    "busybox": "busybox-static",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "pivot_root": "util-linux",
    "mknod": "coreutils",
    "flock": "util-linux",
    "debootstrap": "debootstrap",
    "tar": "tar",
    "find": "findutils",
    "zstd": "zstd",
    "setsid": "util-linux",
    "setpriv": "util-linux",
    "script": "bsdutils",
    "iptables": "iptables",
    "brctl": "bridge-utils",
}
# Run inside the process phase's script, so not visible as any step's argv[0].
INNER_TOOLS = ("mount", "pivot_root", "env", "setsid", "setpriv")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"`ctrsh {what}` needs root (namespaces, mounts): run it with sudo")


# Wrappers whose argv, after their own options and `--`, is another host command.
WRAPPERS = ("nsenter", "unshare")


def step_tools(argv: Argv) -> list[str]:
    """The host programs one step runs: argv[0] and, through each wrapper, the command after its `--`.

    Read off the known wrappers' structure, never by scanning for `--`: past
    the first program that is not a wrapper (`sh`, `env`) come its arguments
    and the recipe's values (`args: [/bin/echo, --, hello]`), not tools.
    """
    found = [argv[0]]
    while os.path.basename(argv[0]) in WRAPPERS and "--" in argv:
        argv = argv[argv.index("--") + 1 :]
        if not argv:
            break
        found.append(argv[0])
    return found


def tools(plan: Plan) -> list[str]:
    """Every program the plan executes on the host."""
    found: list[str] = list(INNER_TOOLS)
    for step in plan.steps:
        found += step_tools(step.argv)
    return list(dict.fromkeys(found))


def check_dirs(facts: Facts) -> None:
    """The state and data dirs, or the dirs above them that exist, must be root's alone.

    Every step runs as root on paths under them: in a dir another user can
    write, that user could swap a path for a symlink between two steps, and
    `rm -rf` or `mount` would follow it; `destroy` would not trust it either.
    """
    from .owner import trusted_dir

    for what, path in (("state dir", facts.state_dir), ("data dir", facts.data_dir)):
        existing = path
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if why := trusted_dir(existing):
            raise UsageError(
                f"{what} {path}: {why}; ctrsh runs as root there and would follow a link another user planted"
            )


class NameInUse(CtrshError):
    exit_code = 125  # as `docker run` for a name conflict


def check(plan: Plan, facts: Facts, paths: Paths) -> None:
    require_root("apply")
    if os.path.lexists(paths.state) or os.path.lexists(paths.layer):
        raise NameInUse(
            f"a container named {plan.name!r} already exists (in {paths.state} or {paths.layer}); "
            f"if it is left over from a crash, `ctrsh destroy {plan.name}` removes it"
        )
    check_dirs(facts)
    missing = [t for t in tools(plan) if shutil.which(t, path=SAFE_PATH) is None]
    if not os.path.exists(facts.busybox) and any(facts.busybox in s.argv for s in plan.steps):
        missing.append("busybox")
    building = [s for s in plan.steps if s.creates and not os.path.lexists(s.creates)]
    copies_busybox = any(facts.busybox in s.argv for s in building) and os.path.exists(facts.busybox)
    if copies_busybox and not is_static(facts.busybox):
        raise UsageError(
            f"{facts.busybox} is dynamically linked: inside the container it would find no libraries; "
            "install a static one with `apt-get install busybox-static`"
        )
    if missing:
        pkgs = sorted({PACKAGES.get(t, "coreutils") for t in missing})
        raise UsageError(f"missing {', '.join(missing)}: install with `apt-get install {' '.join(pkgs)}`")


def is_static(path: str) -> bool:
    """True if the ELF file asks for no program interpreter (no PT_INTERP header): it needs no ld.so."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only; anything else is not what we expect
            return False
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))
