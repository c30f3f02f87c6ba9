"""The recipe: what a user writes, as typed data, loaded with file:line:col errors.

The recipe is shaped by phase (rootfs, namespaces, process, …) so that later
sections (network, resources, mounts, security) slot in beside these.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import yaml

from . import schema, yamlload
from .errors import Problem, RecipeError

Namespace = Literal["mount", "uts", "ipc", "pid", "net", "cgroup", "user"]
# The default set; `user` is only made when a recipe lists it (it changes who owns the image's files).
ALL_NAMESPACES: tuple[Namespace, ...] = ("mount", "uts", "ipc", "pid", "net", "cgroup")

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
LABEL_RE = re.compile(_LABEL)  # 63 at most
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The kernel's limits on what execve takes: one string of at most MAX_ARG_STRLEN
# bytes with its NUL, and all of them within a quarter of the stack limit (2 MiB
# with the usual 8 MiB); ctrsh keeps well inside that, with room for its own.
MAX_ARG_STRLEN = 131072
MAX_ARGS_TOTAL = 1024 * 1024
Issues = list[tuple[int | str | None, str]]  # (list index or mapping key, message): see schema.Checker._check


def _too_long(text: str) -> str | None:
    size = len(text.encode()) + 1
    if size > MAX_ARG_STRLEN:
        return (
            f"is {size - 1} bytes; the kernel takes at most {MAX_ARG_STRLEN - 1} per argument "
            "or variable (MAX_ARG_STRLEN)"
        )
    return None


def check_name(value: str) -> str | None:
    if len(value) > 63 or not NAME_RE.fullmatch(value):
        return (
            f"{value!r} is not a valid container name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (it names files, a network namespace and the hostname)"
        )
    if value in RESERVED_NAMES:
        return f"{value!r} is reserved: ctrsh keeps {RESERVED_NAMES[value]} under that name in its state dir"
    return None


# Names of what ctrsh keeps beside the containers in its state dir (ipam.registry).
RESERVED_NAMES = {"network": "the network registry (address leases, shared pieces)"}


def check_hostname(value: str) -> str | None:
    # The kernel keeps at most 64 bytes of nodename (__NEW_UTS_LEN).
    if len(value) > 64 or not all(LABEL_RE.fullmatch(label) for label in value.split(".")):
        return (
            f"{value!r} is not a valid hostname: use at most 64 characters of letters, digits, "
            "'-' and '.', in dot-separated labels of at most 63 that start and end with a letter or digit"
        )
    return None


def check_args(value: list[str]) -> str | Issues | None:
    if not value:
        return "needs at least the program to run, e.g. [/bin/sh]"
    issues: Issues = []
    if not value[0]:
        issues.append((0, "the program (first item) is empty"))
    # It is exec'd by `env`, which would read a leading '-' as an option and a '=' as a variable.
    elif value[0].startswith("-") or "=" in value[0]:
        issues.append((0, f"the program (first item) {value[0]!r} cannot start with '-' or contain '='"))
    issues += [(i, msg) for i, arg in enumerate(value) if (msg := _too_long(arg))]
    return issues


def check_env(value: dict[str, str]) -> Issues:
    issues: Issues = []
    for key, val in value.items():
        if not ENV_KEY_RE.fullmatch(key):
            issues.append(
                (key, f"{key!r} is not a valid variable name (letters, digits and '_', not starting with a digit)")
            )
        elif isinstance(val, str) and (msg := _too_long(f"{key}={val}")):
            issues.append((key, f"{key}=VALUE {msg}"))
    return issues


def check_cwd(value: str) -> str | None:
    return None if value.startswith("/") else f"{value!r} must be an absolute path inside the container"


def check_namespaces(value: list[str]) -> Issues:
    """Runs with invalid items too (they are skipped), so a typo and a duplicate come in one run."""
    issues: Issues = []
    first: dict[str, int] = {}
    for i, kind in enumerate(value):
        if not isinstance(kind, str):
            continue
        if kind in first:
            issues.append((i, f"{kind!r} is listed twice (first as namespaces[{first[kind]}])"))
        else:
            first[kind] = i
    if "mount" not in value and all(isinstance(k, str) for k in value):
        issues.append(
            (None, "'mount' is required: without its own mount namespace, pivot_root would change the host's root")
        )
    return issues


# --- user namespace maps -------------------------------------------------------------------------
# A map line is the kernel's own "INSIDE OUTSIDE COUNT" (user_namespaces(7)): ids INSIDE..INSIDE+COUNT-1
# of the container are host ids OUTSIDE..OUTSIDE+COUNT-1. Default: root inside is host 100000, 65536 ids.
DEFAULT_IDMAP = ("0 100000 65536",)
IDMAP_RE = re.compile(r"([0-9]{1,10}) +([0-9]{1,10}) +([0-9]{1,10})")
MAX_ID = 2**32 - 1  # (uid_t)-1 is never a valid id: a range must end below it
MAX_IDMAP_LINES = 340  # the kernel's limit since Linux 4.15 (UID_GID_MAP_MAX_EXTENTS)
MAX_IDMAP_BYTES = 4095  # one write() of less than a page


def parse_idmap(lines: list[str] | tuple[str, ...]) -> list[tuple[int, int, int]]:
    """Valid lines -> (inside, outside, count); a line that does not parse is left out."""
    out = []
    for line in lines:
        m = IDMAP_RE.fullmatch(line.strip()) if isinstance(line, str) else None
        if m:
            out.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    return out


def map_id(ranges: list[tuple[int, int, int]], inside: int) -> int | None:
    """The host id of an id inside, or None if the map leaves it out."""
    for first, outside, count in ranges:
        if first <= inside < first + count:
            return outside + inside - first
    return None


def check_idmap(value: list[str]) -> Issues:
    issues: Issues = []
    if not value:
        return [(None, "needs at least one line 'INSIDE OUTSIDE COUNT', e.g. '0 100000 65536'")]
    if len(value) > MAX_IDMAP_LINES:
        issues.append((None, f"has {len(value)} lines; the kernel takes at most {MAX_IDMAP_LINES}"))
    if sum(len(str(v).strip()) + 1 for v in value) > MAX_IDMAP_BYTES:
        issues.append(
            (None, f"is more than {MAX_IDMAP_BYTES} bytes; the kernel reads a map in one write of under a page")
        )
    seen: list[tuple[int, int, int, int]] = []  # (inside, outside, count, index)
    for i, line in enumerate(value):
        if not isinstance(line, str):
            continue
        m = IDMAP_RE.fullmatch(line.strip())
        if not m:
            issues.append((i, f"{line!r} is not 'INSIDE OUTSIDE COUNT' (three numbers, e.g. '0 100000 65536')"))
            continue
        inside, outside, count = (int(g) for g in m.groups())
        if count == 0:
            issues.append((i, f"{line!r}: the count must be at least 1"))
            continue
        if inside + count > MAX_ID or outside + count > MAX_ID:
            issues.append((i, f"{line!r}: the range overflows: ids end below {MAX_ID} (4294967295 is not an id)"))
            continue
        if outside == 0:
            issues.append((i, f"{line!r} maps onto host id 0 (root): root inside would be root on the host"))
            continue
        for a, b, n, j in seen:
            if inside < a + n and a < inside + count:
                issues.append((i, f"{line!r}: its ids inside overlap those of [{j}] ({value[j]!r})"))
                break
            if outside < b + n and b < outside + count:
                issues.append((i, f"{line!r}: its host ids overlap those of [{j}] ({value[j]!r})"))
                break
        else:
            seen.append((inside, outside, count, i))
    if not issues and map_id(parse_idmap(value), 0) is None:
        issues.append((None, "must map id 0 inside: the container starts as root of its user namespace"))
    return issues


_IDMAP_DOC = (
    "Lines 'INSIDE OUTSIDE COUNT' as the kernel reads them (needs 'user' in namespaces): container ids "
    "INSIDE.. are host ids OUTSIDE... Default with 'user': the ranges of user ctrsh in /etc/subuid and "
    "/etc/subgid, else the first free 65536 ids from 100000. Host ids must be no one's (/etc/passwd, "
    "/etc/group, other users' subordinate ranges); host id 0 is never mapped."
)
IDMAP_FIELD_META = {
    "doc": _IDMAP_DOC,
    "check": check_idmap,
    "partial": True,
    "json": {"minItems": 1, "maxItems": MAX_IDMAP_LINES, "items": {"pattern": f"^{IDMAP_RE.pattern}$"}},
}


SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))? ?([kmgtpe]?)(?:i?b)?", re.IGNORECASE)
SIZE_UNITS = "kmgtpe"  # powers of 1024, as Docker reads `-m 256m`
MAX_BYTES = 2**63 - 1  # the kernel reads limits as a signed 64-bit count of bytes
MIN_MEMORY = 6 * 2**20  # as Docker: below this not even the container's start fits
MAX_PIDS = 4194304  # PID_MAX_LIMIT: pids.max refuses more
MAX_CPUS = 1024


def parse_bytes(text: str) -> int | None:
    """`256M`, `1.5G`, `512k`, `1GiB`, `268435456` -> bytes (units are powers of 1024); None if not a size."""
    m = SIZE_RE.fullmatch(text.strip())
    if not m:
        return None
    whole, frac, unit = m.groups()
    scale = 1024 ** (SIZE_UNITS.index(unit.lower()) + 1) if unit else 1
    return int(whole) * scale + (int(frac) * scale) // 10 ** len(frac) if frac else int(whole) * scale


def _size(value: str, minimum: int) -> str | None:
    n = parse_bytes(value)
    if n is None:
        return f"{value!r} is not a size: write bytes or a number with a unit k, M, G, T (powers of 1024), e.g. 256M"
    if n < minimum:
        return f"{value!r} is below the minimum of {minimum // 2**20}M"
    if n > MAX_BYTES:
        return f"{value!r} is more than the kernel's limit of {MAX_BYTES} bytes"
    return None


def check_memory(value: str) -> str | None:
    return _size(value, MIN_MEMORY)


def check_memory_swap(value: str) -> str | None:
    return None if value.strip() == "-1" else _size(value, MIN_MEMORY)


def check_cpus(value: float) -> str | None:
    if not 0.01 <= value <= MAX_CPUS:  # also refuses .nan; the kernel's smallest quota is 1 ms per 100 ms
        return f"{value} is out of range: from 0.01 to {MAX_CPUS} CPUs"
    return None


def check_cpu_weight(value: int) -> str | None:
    return None if 1 <= value <= 10000 else f"{value} is out of range: a weight is from 1 to 10000 (default 100)"


def check_pids(value: int) -> str | None:
    return None if 1 <= value <= MAX_PIDS else f"{value} is out of range: from 1 to {MAX_PIDS} (the kernel's limit)"


SIZE_SCHEMA = {"type": ["string", "integer"], "pattern": r"^\s*[0-9]+(\.[0-9]+)? ?[kKmMgGtTpPeE]?([iI]?[bB])?\s*$"}


@dataclass(frozen=True)
class Resources:
    """Limits enforced by the container's cgroup (v1 or v2, whichever the host has)."""

    cpus: float | None = field(
        default=None,
        metadata={
            "doc": "CPU time, in cores: 1.5 is 150 ms per 100 ms period (a CFS quota).",
            "check": check_cpus,
            "json": {"minimum": 0.01, "maximum": MAX_CPUS},
        },
    )
    cpu_weight: int | None = field(
        default=None,
        metadata={
            "doc": "Share of CPU time under contention, 1-10000 (cgroup v2 cpu.weight; default 100). "
            "On cgroup v1 converted to cpu.shares as runc does.",
            "check": check_cpu_weight,
            "json": {"minimum": 1, "maximum": 10000},
        },
    )
    memory: str | None = field(
        default=None,
        metadata={
            "doc": "Memory limit: bytes or with a unit, e.g. 256M, 1G. Above it the kernel's OOM killer strikes.",
            "text": True,  # `memory: 268435456`
            "check": check_memory,
            "schema": {**SIZE_SCHEMA, "type": ["string", "integer", "null"]},
        },
    )
    memory_swap: str | None = field(
        default=None,
        metadata={
            "doc": "Memory plus swap, as Docker's --memory-swap: at least `memory`; -1 for unlimited swap. "
            "Default: twice `memory`.",
            "text": True,  # `memory: 268435456`
            "check": check_memory_swap,
            # anyOf: -1 is also an integer SIZE_SCHEMA takes (its pattern is for strings only)
            "schema": {"anyOf": [SIZE_SCHEMA, {"const": -1}, {"const": "-1"}, {"type": "null"}]},
        },
    )
    pids: int | None = field(
        default=None,
        metadata={
            "doc": "Most processes (and threads) at once: a fork bomb stops here.",
            "check": check_pids,
            "json": {"minimum": 1, "maximum": MAX_PIDS},
        },
    )


@dataclass(frozen=True)
class Busybox:
    """A tiny root filesystem made from the host's static busybox (package busybox-static),
    built once into ctrsh's data dir with relative applet links, then shared read-only."""


SUITE_RE = re.compile(r"[a-z][a-z0-9.-]{0,31}")
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
MIRROR_RE = re.compile(r"(https?|file)://[^\s,'\"\\]+")
VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TMPFS_SIZE_RE = re.compile(r"[1-9][0-9]{0,11}[kKmMgG]?")
MODE_RE = re.compile(r"[0-7]{3,4}")


def check_suite(value: str) -> str | None:
    return None if SUITE_RE.fullmatch(value) else f"{value!r} is not a Debian suite name (e.g. bookworm, trixie)"


def check_packages(value: list[str]) -> str | None:
    bad = [p for p in value if not PACKAGE_RE.fullmatch(p)]
    return f"{bad[0]!r} is not a Debian package name" if bad else None


def check_mirror(value: str) -> str | None:
    if not MIRROR_RE.fullmatch(value):
        return f"{value!r} is not a mirror URL (http://, https:// or file://, no spaces, commas or quotes)"
    return None


def check_host_path(value: str) -> str | None:
    if not value:
        return "is empty"
    return None


@dataclass(frozen=True)
class Debootstrap:
    """A Debian (or Ubuntu) root filesystem made by debootstrap, built once and cached by its parameters."""

    suite: str = field(metadata={"doc": "The release, e.g. bookworm.", "check": check_suite})
    variant: Literal["minbase", "buildd", "fakechroot", "-"] = field(
        default="minbase", metadata={"doc": "debootstrap --variant ('-' for debootstrap's default set)."}
    )
    include: list[str] = field(
        default_factory=list, metadata={"doc": "Extra packages (debootstrap --include).", "check": check_packages}
    )
    mirror: str | None = field(
        default=None,
        metadata={"doc": "Archive URL. Default: the host's apt sources, else deb.debian.org.", "check": check_mirror},
    )


@dataclass(frozen=True)
class Tarball:
    """A root filesystem archive (.tar, .tar.gz, .tar.xz, .tar.zst), e.g. from `docker export`;
    unpacked once into a cached image keyed by the file's content hash."""

    path: str = field(
        metadata={"doc": "The archive on the host (relative to the recipe's directory).", "check": check_host_path}
    )


@dataclass(frozen=True)
class Directory:
    """An existing root filesystem directory, used as the read-only lower layer; never written or deleted."""

    path: str = field(
        metadata={"doc": "The directory on the host (relative to the recipe's directory).", "check": check_host_path}
    )


@dataclass(frozen=True)
class Rootfs:
    """Where the container's root filesystem comes from. Set exactly one source."""

    one_of: ClassVar[bool] = True
    busybox: Busybox | None = field(default=None, metadata={"doc": "Build from the host's busybox-static."})
    debootstrap: Debootstrap | None = field(default=None, metadata={"doc": "Build Debian with debootstrap."})
    tarball: Tarball | None = field(default=None, metadata={"doc": "Unpack a root filesystem archive."})
    directory: Directory | None = field(default=None, metadata={"doc": "Use a directory as the image."})


def check_target(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} must be an absolute path inside the container"
    if ".." in value.split("/"):
        return f"{value!r} must not contain '..'"
    if value != "/" and (value.endswith("/") or "//" in value or "/./" in value or value.endswith("/.")):
        return f"{value!r} is not normalised; write {posixpath.normpath(value)!r}"
    if value == "/":
        return "cannot mount over the root itself"
    if value == "/proc" or value.startswith("/proc/"):
        return f"{value!r}: /proc is mounted when the container starts and would hide it"
    return None


def check_size(value: str) -> str | None:
    return None if TMPFS_SIZE_RE.fullmatch(value) else f"{value!r} is not a size: a number with k, m or g (e.g. 64M)"


def check_mode(value: str) -> str | None:
    return None if MODE_RE.fullmatch(value) else f'{value!r} is not an octal mode (e.g. "1777" or "755")'


@dataclass(frozen=True)
class Mount:
    """A volume: a host directory (bind), a named volume kept in ctrsh's data dir (volume), or a tmpfs."""

    type: Literal["bind", "volume", "tmpfs"] = field(metadata={"doc": "bind, volume or tmpfs."})
    target: str = field(metadata={"doc": "Absolute, normalised path inside the container.", "check": check_target})
    source: str | None = field(
        default=None,
        metadata={"doc": "bind: an existing host path (relative to the recipe); volume: the volume's name."},
    )
    readonly: bool = field(default=False, metadata={"doc": "Mount read-only (bind and volume)."})
    size: str | None = field(default=None, metadata={"doc": "tmpfs: size limit, e.g. 64M.", "check": check_size})
    mode: str | None = field(default=None, metadata={"doc": 'tmpfs: octal mode, e.g. "1777".', "check": check_mode})


def check_dns(value: list[str]) -> str | None:
    for v in value:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            return f"{v!r} is not an IP address"
    return None


@dataclass(frozen=True)
class Process:
    """The program the container runs as its PID 1."""

    args: list[str] = field(
        metadata={
            "doc": "Program and arguments, run with exec (no shell unless you name one).",
            "check": check_args,
            "text": True,  # `[sleep, 300]`
            "lines": True,  # a script for `sh -c` may have several lines
            "json": {
                "minItems": 1,
                # the program: not empty, no leading '-', no '=' (a number written as one: not negative)
                "not": {
                    "prefixItems": [
                        {"anyOf": [{"type": "string", "pattern": "^-|=|^$"}, {"type": "number", "exclusiveMaximum": 0}]}
                    ]
                },
            },
        }
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "doc": "Environment variables, added to PATH, HOME and HOSTNAME.",
            "check": check_env,
            "partial": True,
            "text": True,  # `PORT: 8080`
            "json": {"propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}},
        },
    )
    cwd: str = field(
        default="/",
        metadata={"doc": "Working directory inside the container.", "check": check_cwd, "json": {"pattern": "^/"}},
    )
    terminal: bool = field(
        default=False,
        metadata={
            "doc": "Give the container a new pty of its own (like `docker run -it`), for interactive programs. "
            "Without it the container has no controlling terminal and stdin is /dev/null unless piped."
        },
    )
    init: bool = field(
        default=False,
        metadata={
            "doc": "Run a tiny init as PID 1 (Debian's tini-static, a trusted copy of the host's, like "
            "`docker run --init`): it forwards signals to the command and reaps orphans. For a command "
            "that does not handle SIGTERM/SIGINT itself (PID 1 ignores signals it has no handler for) "
            "or that leaves zombies."
        },
    )

    @staticmethod
    def rules(p: Process) -> Issues:
        total = sum(len(s.encode()) + 1 for s in (*p.args, *(f"{k}={v}" for k, v in p.env.items())))
        if total > MAX_ARGS_TOTAL:
            return [
                (
                    "args",
                    f"the arguments and environment take {total} bytes; ctrsh allows at most {MAX_ARGS_TOTAL} "
                    "(1 MiB; the kernel's execve limit is a quarter of the stack limit)",
                )
            ]
        return []


# Docker's default capability set (moby/oci/caps/defaults.go), lowercase as setpriv spells them.
DOCKER_CAPS = (
    "chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
    "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
)  # fmt: skip
# Every capability the kernel had when this was written (capability.h, up to CAP_CHECKPOINT_RESTORE).
ALL_CAPS = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
    "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
    "checkpoint_restore",
)  # fmt: skip
# Read-only and masked kernel interfaces, as Docker (v29) and runc set them by default.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
    "/sys/devices/virtual/powercap", "/sys/firmware",
)  # fmt: skip
# rlimit name -> the flag of the shell's `ulimit` builtin (dash's set, which PID 1's shell is).
RLIMITS = {
    "core": "-c", "data": "-d", "fsize": "-f", "memlock": "-l", "nofile": "-n", "rss": "-m", "stack": "-s",
    "cpu": "-t", "nproc": "-p", "as": "-v", "locks": "-w", "rtprio": "-r",
}  # fmt: skip
# Recipe values are the kernel's units (bytes, as Docker's --ulimit and prlimit take them); dash's
# `ulimit` counts these in KiB, and fsize in 512-byte blocks.
RLIMIT_UNIT = {"core": 512, "data": 1024, "fsize": 512, "memlock": 1024, "rss": 1024, "stack": 1024, "as": 1024}
LIMIT_RE = re.compile(r"(unlimited|[0-9]{1,19})(:(unlimited|[0-9]{1,19}))?")
KERNEL_PATH_RE = re.compile(r"/(proc|sys)(/[A-Za-z0-9_.:@+-]+)+")
ID_RE = re.compile(r"[0-9]{1,10}(:[0-9]{1,10})?")


# For the JSON Schema: the spellings cap_name() accepts (any case in the loader; these four here).
_CAP_SPELLINGS = [s for c in ALL_CAPS for s in (c, c.upper(), f"cap_{c}", f"CAP_{c.upper()}")]
_KERNEL_PATHS_JSON = {
    "items": {"type": "string", "pattern": f"^{KERNEL_PATH_RE.pattern}$", "not": {"pattern": "/\\.\\.?(/|$)"}}
}


def cap_name(value: str) -> str:
    name = value.lower()
    return name[4:] if name.startswith("cap_") else name


def check_caps(value: list[str] | str) -> str | None:
    if isinstance(value, str):
        return None if value in ("all", "none") else f"{value!r}: use a list of capabilities, 'all' or 'none'"
    bad = [c for c in value if cap_name(c) not in ALL_CAPS]
    if bad:
        hint = difflib.get_close_matches(cap_name(bad[0]), ALL_CAPS, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{bad[0]!r} is not a capability{extra} (e.g. chown, net_bind_service, sys_admin)"
    return None


def check_rlimits(value: dict[str, str]) -> str | None:
    for name, limit in value.items():
        if name not in RLIMITS:
            return f"{name!r} is not a resource limit (one of: {', '.join(RLIMITS)})"
        if not LIMIT_RE.fullmatch(limit):
            return f"{name}: {limit!r} is not a limit: use N (soft and hard), SOFT:HARD, or 'unlimited'"
        soft, _, hard = limit.partition(":")
        if hard and hard != "unlimited" and (soft == "unlimited" or int(soft) > int(hard)):
            return f"{name}: the soft limit {soft} is above the hard limit {hard}"
        if name == "nofile" and "unlimited" in (soft, hard):
            return "nofile: the kernel caps open files at fs.nr_open (1048576 by default): give a number"
        unit = RLIMIT_UNIT.get(name, 1)
        if any(v != "unlimited" and int(v) % unit for v in (soft, hard) if v):
            return f"{name}: {limit!r} must be a multiple of {unit} bytes"
    return None


def check_kernel_paths(value: list[str]) -> str | None:
    bad = [p for p in value if not KERNEL_PATH_RE.fullmatch(p) or "/../" in f"{p}/" or "/./" in f"{p}/"]
    if bad:
        return f"{bad[0]!r}: only plain paths under /proc or /sys can be masked or made read-only"
    return None


def check_user(value: str) -> str | None:
    if not ID_RE.fullmatch(value) or any(int(x) > 4294967294 for x in value.split(":")):
        return (
            f"{value!r} is not UID[:GID]: use numbers (names would be looked up in the image's /etc/passwd "
            "by a process that still has every capability)"
        )
    return None


@dataclass(frozen=True)
class Security:
    """Privileges of the container's processes. Defaults are Docker's."""

    capabilities: list[str] | str = field(
        default_factory=lambda: list(DOCKER_CAPS),
        metadata={
            "doc": "Capabilities PID 1 keeps (bounding, permitted, effective): a list, 'all' or 'none'. "
            "Default: Docker's 14.",
            "check": check_caps,
            "json": {"anyOf": [{"enum": ["all", "none"]}, {"type": "array", "items": {"enum": _CAP_SPELLINGS}}]},
        },
    )
    no_new_privileges: bool = field(
        default=True, metadata={"doc": "Set no_new_privs: setuid binaries and file capabilities grant nothing."}
    )
    rlimits: dict[str, str] = field(
        default_factory=dict,
        metadata={"doc": "Resource limits, e.g. {nofile: '1024:4096'}. Default: nofile 1024:1024.",
                  "check": check_rlimits, "text": True,  # `nofile: 4096`
                  "json": {"propertyNames": {"enum": list(RLIMITS)},
                           "additionalProperties": {"anyOf": [
                               {"type": "string", "pattern": f"^{LIMIT_RE.pattern}$"},
                               {"type": "integer", "minimum": 0}]}}},
    )  # fmt: skip
    user: str | None = field(
        default=None,
        metadata={
            "doc": "Run as UID[:GID] (numeric). Default: root (0:0).",
            "check": check_user,
            "text": True,  # `user: 1000`
            "json": {
                "anyOf": [
                    {"type": "string", "pattern": f"^{ID_RE.pattern}$"},
                    {"type": "integer", "minimum": 0, "maximum": 4294967294},
                    {"type": "null"},
                ]
            },
        },
    )
    readonly_paths: list[str] = field(
        default_factory=lambda: list(READONLY_PATHS),
        metadata={"doc": "Paths under /proc or /sys made read-only. Default: Docker's.",
                  "check": check_kernel_paths, "json": _KERNEL_PATHS_JSON},
    )  # fmt: skip
    masked_paths: list[str] = field(
        default_factory=lambda: list(MASKED_PATHS),
        metadata={"doc": "Paths under /proc or /sys hidden (empty tmpfs or /dev/null over them). Default: Docker's.",
                  "check": check_kernel_paths, "json": _KERNEL_PATHS_JSON},
    )  # fmt: skip

    def caps(self) -> tuple[str, ...]:
        """The capability names kept, normalised."""
        if self.capabilities == "all":
            return ALL_CAPS
        if self.capabilities == "none":
            return ()
        return tuple(dict.fromkeys(cap_name(c) for c in self.capabilities))


NetworkMode = Literal["none", "host", "bridge", "container"]
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,14}")  # the kernel's IFNAMSIZ: 15 characters
PUBLISH_RE = re.compile(r"(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?")


def check_bridge(value: str) -> str | None:
    # No '.' or '/': the name also becomes a sysctl key (net.ipv4.conf.BRIDGE.route_localnet).
    if not IFNAME_RE.fullmatch(value):
        return f"{value!r} is not a usable bridge name: 1-15 letters, digits, '_' and '-', not starting with '-'"
    return None


def check_subnet(value: str) -> str | None:
    import ipaddress

    try:
        net = ipaddress.IPv4Network(value)
    except ValueError as e:
        return f"{value!r} is not an IPv4 subnet like 10.88.0.0/16 ({e})"
    private = [ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
    if not any(net.subnet_of(p) for p in private):
        # A recipe is untrusted: 0.0.0.0/0 or 127.0.0.0/8 on a bridge would take over the host's routing.
        return f"{value!r} is not in a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"
    if net.prefixlen > 30:
        return f"{value!r} is too small: it needs room for the gateway and at least one container (/30 at most)"
    return None


def check_address(value: str) -> str | None:
    import ipaddress

    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"{value!r} is not an IPv4 address like 10.88.0.5 (no prefix: it comes from the subnet)"
    return None


def parse_publish(value: str) -> tuple[int, int, str] | None:
    """'8080:80' or '5353:53/udp' -> (host port, container port, protocol); None if malformed."""
    m = PUBLISH_RE.fullmatch(value)
    if not m or not all(1 <= int(p) <= 65535 for p in m.group(1, 2)):
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3) or "tcp"


def check_publish(value: list[str]) -> str | None:
    seen: set[tuple[int, str]] = set()
    for i, item in enumerate(value):
        parsed = parse_publish(item)
        if parsed is None:
            return f"[{i}]: {item!r} is not HOST_PORT:CONTAINER_PORT[/tcp|/udp] with ports 1-65535, e.g. '8080:80'"
        if (parsed[0], parsed[2]) in seen:
            return f"[{i}]: host port {parsed[0]}/{parsed[2]} is published twice"
        seen.add((parsed[0], parsed[2]))
    return None


@dataclass(frozen=True)
class Network:
    """How the container reaches the network. The bridge keys only apply to mode bridge."""

    mode: NetworkMode = field(
        default="none",
        metadata={
            "doc": "none: own network namespace with only lo (the default here; Docker's default is bridge). "
            "host: the host's network (no net namespace). bridge: a veth pair to a bridge, NAT to the outside. "
            "container: join the network namespace of the running container named by `container` (a pod)."
        },
    )
    container: str | None = field(
        default=None,
        metadata={"doc": "Mode container: the running container whose network to share.", "check": check_name},
    )
    bridge: str | None = field(
        default=None, metadata={"doc": "Bridge name (mode bridge). Default: ctrsh0.", "check": check_bridge}
    )
    subnet: str | None = field(
        default=None,
        metadata={"doc": "The bridge's subnet; the gateway is its first address. Default 10.88.0.0/16.",
                  "check": check_subnet},
    )  # fmt: skip
    address: str | None = field(
        default=None,
        metadata={"doc": "A fixed address in the subnet. Default: the next free one.", "check": check_address},
    )
    publish: list[str] | None = field(
        default=None,
        metadata={"doc": "Published ports, HOST:CONTAINER[/tcp|/udp], e.g. ['8080:80'].", "check": check_publish},
    )
    bridge_tool: Literal["ip", "brctl"] | None = field(
        default=None,
        metadata={"doc": "Make the bridge with `ip link` (default) or `brctl`, as the wocker tutorial does."},
    )


@dataclass(frozen=True)
class Recipe:
    """A ctrsh recipe: one container, described by phase."""

    name: str = field(
        metadata={
            "doc": "Container name: lowercase letters, digits and '-'.",
            "check": check_name,
            "json": {"pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", "maxLength": 63},
        }
    )
    rootfs: Rootfs = field(metadata={"doc": "Where the root filesystem comes from."})
    process: Process = field(metadata={"doc": "What runs inside."})
    hostname: str | None = field(
        default=None,
        metadata={
            "doc": "Hostname inside (needs the uts namespace). Default: the name.",
            "check": check_hostname,
            "json": {"pattern": f"^{_LABEL}(\\.{_LABEL})*$", "maxLength": 64},
        },
    )
    namespaces: list[Namespace] | None = field(
        default=None,
        metadata={
            "doc": "Namespaces to create. Default: all of mount, uts, ipc, pid, net, and cgroup where the host has it.",
            "check": check_namespaces,
            "partial": True,
            "json": {"uniqueItems": True, "contains": {"const": "mount"}},
        },
    )
    security: Security = field(
        default_factory=Security, metadata={"doc": "Capabilities, no_new_privs, rlimits, user, kernel paths."}
    )
    resources: Resources | None = field(
        default=None, metadata={"doc": "Resource limits (cgroups): cpus, cpu_weight, memory, memory_swap, pids."}
    )
    readonly: bool = field(default=False, metadata={"doc": "A read-only root filesystem: writes fail with EROFS."})
    mounts: list[Mount] = field(default_factory=list, metadata={"doc": "Volumes: bind, named volume or tmpfs."})
    dns: list[str] | None = field(
        default=None,
        metadata={"doc": "Nameservers for /etc/resolv.conf. Default: the host's, minus loopback.", "check": check_dns},
    )
    network: Network | None = field(
        default=None, metadata={"doc": "Networking: mode none (default), host or bridge, with NAT and published ports."}
    )
    uid_map: list[str] | None = field(default=None, metadata=IDMAP_FIELD_META)
    gid_map: list[str] | None = field(default=None, metadata=IDMAP_FIELD_META)
    # Bookkeeping, not recipe keys: where each value was written (dotted path ->
    # line, col), so problems found after loading (in compile) still point at the text.
    positions: dict[str, schema.Pos] = field(default_factory=dict, compare=False, repr=False, metadata=schema.INTERNAL)
    file: str = field(default="<recipe>", compare=False, repr=False, metadata=schema.INTERNAL)

    @staticmethod
    def rules(r: Recipe) -> Issues:
        if r.hostname is not None and r.namespaces is not None and "uts" not in r.namespaces:
            return [("hostname", "setting a hostname needs the 'uts' namespace (else it renames the host)")]
        return Recipe.user_rules(r)

    @staticmethod
    def user_rules(r: Recipe) -> Issues:
        """uid_map/gid_map need the user namespace; `security.user` must be an id the maps have."""
        issues: Issues = []
        user = r.namespaces is not None and "user" in r.namespaces
        if user and r.namespaces is not None and "pid" not in r.namespaces:
            issues.append(("namespaces", "'user' needs 'pid': PID 1 mounts /proc, which root of a user namespace "
                           "may do only for a PID namespace that namespace owns"))  # fmt: skip
        for key in ("uid_map", "gid_map"):
            if getattr(r, key) is not None and not user:
                issues.append((key, f"{key} needs 'user' in namespaces (without a user namespace ids are the host's)"))
        if user and r.security.user is not None:
            uid, _, gid = r.security.user.partition(":")
            for kind, value, lines in (("uid", uid, r.uid_map), ("gid", gid or uid, r.gid_map)):
                if map_id(parse_idmap(lines or DEFAULT_IDMAP), int(value)) is None:
                    issues.append(("security", f"security.user: {kind} {value} is not in {kind}_map, so it has no "
                                   "host id: the switch to it would fail"))  # fmt: skip
        return issues

    def idmaps(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(uid_map, gid_map) as the kernel's lines, normalised spacing; a missing one as the fixed
        '0 100000 65536'. The plan's default comes from the host's ids instead (compile.resolve_idmaps)."""

        def norm(lines: list[str] | None) -> tuple[str, ...]:
            return tuple(" ".join(map(str, t)) for t in parse_idmap(lines or DEFAULT_IDMAP))

        return norm(self.uid_map), norm(self.gid_map)

    # The same rule for the JSON Schema.
    json_rules: ClassVar[dict[str, Any]] = {
        "if": {
            "required": ["hostname", "namespaces"],
            "properties": {"hostname": {"type": "string"}, "namespaces": {"type": "array"}},
        },
        "then": {"properties": {"namespaces": {"contains": {"const": "uts"}}}},
    }

    def problem(self, path: str, message: str) -> Problem:
        """A problem located at `path`'s value (or its nearest written parent)."""
        key = path
        while key and key not in self.positions:
            key = key.rpartition(".")[0]
        line, col = self.positions.get(key, (1, 1))
        return Problem(self.file, line, col, message)


def _loader() -> type[yaml.SafeLoader]:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster


def parse(text: str, file: str) -> Recipe:
    """Parse and validate recipe text; raise RecipeError listing every problem."""
    text = text.removeprefix("\ufeff")  # a byte order mark is harmless at the very start
    yamlload.check_text(text, file)
    yamlload.check_events(text, file, _loader())
    loader = _loader()(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = " ".join(x for x in (e.context, e.problem) if x)
            raise RecipeError([Problem(file, line, col, f"YAML syntax error: {what}")]) from None
        except yaml.YAMLError as e:
            raise RecipeError([Problem(file, 1, 1, f"YAML error: {e}")]) from None
        if root is None:
            raise RecipeError([Problem(file, 1, 1, "the recipe is empty; it needs at least name, rootfs and process")])
        checker = schema.Checker(file, construct=loader.construct_object)
        recipe = checker.convert(root, Recipe, "")
    finally:
        loader.dispose()
    if checker.problems:
        raise RecipeError(checker.problems)
    loaded: Recipe = dataclasses.replace(recipe, positions=checker.positions, file=file)
    return loaded


def load(path: str) -> Recipe:
    """Read and validate a recipe file."""
    shown = "".join(c if c.isprintable() else "?" for c in path)  # the name starts every message line
    return parse(yamlload.read(path, shown), shown)


def recipe_schema() -> dict[str, Any]:
    out = schema.json_schema(Recipe)
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "ctrsh recipe", **out}
    return out
