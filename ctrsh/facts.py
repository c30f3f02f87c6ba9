"""Host facts: everything compile needs to know about the machine, found before compiling.

Keeping this apart is what lets `compile` stay pure and plans be golden-tested.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field

from .errors import UsageError
from .hostfiles import HostFiles
from .hostids import HostIds

DEV_TEMPLATE_VERSION = 2  # bump whenever rootfs.dev_template's contents change

STATE_ENV, DATA_ENV = "CTRSH_STATE_DIR", "CTRSH_DATA_DIR"
DEFAULT_STATE, DEFAULT_DATA = "/run/ctrsh", "/var/lib/ctrsh"


CGROUP_ROOT = "/sys/fs/cgroup"
# The v1 controllers a container gets a cgroup in: the limits, cpuacct for usage, devices for
# the device allowlist, freezer to stop every process at once before killing them.
CGROUP_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer")
CGROUP_V2_CONTROLLERS = ("cpu", "memory", "pids")


@dataclass(frozen=True)
class CgroupFacts:
    """How this host's cgroups are laid out, read at run time (see `detect_cgroups`)."""

    version: int = 1  # 1: a hierarchy per controller (legacy or hybrid); 2: one unified hierarchy; 0: none
    # Controller -> the directory its hierarchy is mounted on. v1: one per controller, co-mounted
    # ones (cpu,cpuacct) share a dir; v2: every controller the root offers, all on the one mount.
    mounts: tuple[tuple[str, str], ...] = tuple((k, f"{CGROUP_ROOT}/{k}") for k in CGROUP_V1_CONTROLLERS)
    swap: bool = True  # swap is accounted (v1 memory.memsw.*; v2 memory.swap.max)
    root: str = CGROUP_ROOT  # v2: the unified mount, where the container's cgroup goes

    def mount(self, controller: str) -> str | None:
        return dict(self.mounts).get(controller)


@dataclass(frozen=True)
class NetworkFacts:
    """What ctrsh's network registry holds for the recipe's bridge (ipam.survey reads it; compile stays pure)."""

    readable: bool = True  # False: the registry could not be read (plan without root): addresses are a guess
    leases: tuple[tuple[str, str], ...] = ()  # (address, container) held by live containers on the bridge
    ports: tuple[tuple[str, str], ...] = ()  # ("tcp-8080", container): host ports published by live containers
    subnet: str | None = None  # the subnet the bridge's current users set it up with
    routes: tuple[tuple[str, str], ...] = ()  # (destination, device): the host's routes, but default and the bridge's
    listening: tuple[str, ...] = ()  # ("tcp-22", "udp-53"): ports a host process listens on (/proc/net)


@dataclass(frozen=True)
class Facts:
    state_dir: str = DEFAULT_STATE  # per-container runtime state: ns files, the writable layer
    data_dir: str = DEFAULT_DATA  # lasting data: built images; containers' writable layers while they run
    busybox: str = "/bin/busybox"  # the host's static busybox, copied into the busybox image
    cgroup_ns: bool = True  # the kernel has cgroup namespaces
    cgroups: CgroupFacts = CgroupFacts()  # default: these machines, cgroup v1 (hybrid)
    apt_mirror: str = "http://deb.debian.org/debian"  # the host's Debian archive, debootstrap's default
    resolv_conf: str = "nameserver 192.0.2.53\n"  # the host's /etc/resolv.conf text ("" if none)
    files: HostFiles = field(default_factory=HostFiles)  # what the recipe names on the host (hostfiles.gather)
    # The trusted host tools PID 1 runs after pivot_root, from copies on a private tmpfs: setpriv,
    # the shared libraries it loads and their loader (from `ldd`, they differ per host and arch).
    setpriv: str = "/usr/bin/setpriv"
    loader: str = "/lib64/ld-linux-x86-64.so.2"
    setpriv_libs: tuple[str, ...] = ("/lib/x86_64-linux-gnu/libcap-ng.so.0", "/lib/x86_64-linux-gnu/libc.so.6")
    # util-linux unshare, with no namespace to make, switches to `security.user`: unlike setpriv, its
    # -S/-G take numbers only, so no name is looked up in the image (NSS would load the image's code).
    unshare: str = "/usr/bin/unshare"
    tini: str = "/usr/bin/tini-static"  # `process.init`: Debian's static tini ("" if not installed)
    term: str = "xterm"  # $TERM of the caller, passed to containers that get a terminal
    device_cgroup: bool = True  # cgroup v1's devices controller can enforce a device allowlist
    network: NetworkFacts = NetworkFacts()  # the bridge's leases, for mode bridge (see ipam.survey)
    ids: HostIds = field(
        default_factory=HostIds
    )  # the host's accounts and subordinate ranges, for user namespace maps (hostids)


@dataclass(frozen=True)
class Paths:
    """Where one container's files live on the host."""

    facts: Facts
    name: str

    @property
    def state(self) -> str:
        return f"{self.facts.state_dir}/{self.name}"

    @property
    def ns(self) -> str:
        return f"{self.state}/ns"

    def nsfile(self, kind: str) -> str:
        return f"{self.ns}/{kind}"

    @property
    def layer(self) -> str:
        """The container's writable layer: on disk like Docker's, not in /run's RAM, which it could fill."""
        return f"{self.facts.data_dir}/containers/{self.name}"

    @property
    def upper(self) -> str:
        return f"{self.layer}/upper"

    @property
    def work(self) -> str:
        return f"{self.layer}/work"

    @property
    def rootfs(self) -> str:
        return f"{self.state}/rootfs"

    @property
    def netns(self) -> str:
        """The `ip netns` name; prefixed so ctrsh never touches a namespace it did not create.

        Tied to the state dir: `ctrsh-NAME` for the default one, and with 8 hex
        digits of the state dir's sha256 otherwise, so two instances with
        different --state-dir never touch each other's (at most 78 bytes of 255).
        """
        if self.facts.state_dir == DEFAULT_STATE:
            return f"ctrsh-{self.name}"
        import hashlib

        return f"ctrsh-{hashlib.sha256(self.facts.state_dir.encode()).hexdigest()[:8]}-{self.name}"

    @property
    def journal(self) -> str:
        return f"{self.state}/journal"

    @property
    def dev_template(self) -> str:
        # Versioned: a template cached by an older ctrsh (without /dev/mqueue, say) is not reused.
        return f"{self.facts.data_dir}/dev-{DEV_TEMPLATE_VERSION}"

    def image(self, kind: str) -> str:
        return f"{self.facts.data_dir}/images/{kind}"

    @property
    def images(self) -> str:
        return f"{self.facts.data_dir}/images"

    @property
    def volumes(self) -> str:
        return f"{self.facts.data_dir}/volumes"

    def volume(self, name: str) -> str:
        return f"{self.volumes}/{name}"

    @property
    def etc(self) -> str:
        """Per-container /etc/hostname, hosts, resolv.conf, bind-mounted over the image's."""
        return f"{self.state}/etc"


def check_dir(path: str, what: str) -> str:
    # ',' and ':' separate overlayfs options and layers, and mount(8) reads quotes and
    # backslashes in options: such a path cannot be a layer.
    norm = os.path.normpath(path)
    if not path.startswith("/") or norm == "/" or any(c in path for c in ",:\"'\\") or any(c.isspace() for c in path):
        raise UsageError(
            f"{what} must be an absolute path other than '/', without ',', ':', quotes, backslashes "
            f"or white space: {path!r}"
        )
    # The overlay mount's options hold the data dir three times (lowerdir, upperdir,
    # workdir), and the kernel takes at most one page (4096 bytes) of options.
    if len(norm.encode()) > MAX_DIR:
        raise UsageError(
            f"{what} is {len(norm.encode())} bytes long; at most {MAX_DIR}: overlayfs' mount options hold it "
            "three times and the kernel limits them to one page (4096 bytes)"
        )
    return norm


# Three data dir paths of this length, each with a container's name (63) and a
# suffix, leave room within overlay's 4096 bytes of options.
MAX_DIR = 1024


def setpriv_deps(setpriv: str) -> tuple[str, tuple[str, ...]] | None:
    """The loader and libraries of the host's setpriv, as `ldd` lists them; None if it cannot tell."""
    import subprocess

    # `ldd` is a bash script that runs the program's loader twice: asking the loader itself
    # (`ld.so --list`, the same listing) takes 1 ms instead of 20 for each of the two programs.
    interp = elf_interpreter(setpriv)
    argv = [interp, "--list", setpriv] if interp else ["ldd", setpriv]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env={"PATH": SAFE_PATH})
    except (OSError, subprocess.SubprocessError):
        return None
    loader, libs = "", []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            loader = parts[0]
    return (loader, tuple(libs)) if loader and out.returncode == 0 else None


def elf_interpreter(path: str) -> str | None:
    """The program loader a 64-bit little-endian ELF executable names (PT_INTERP), if it is a file."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
                return None
            phoff, phentsize, phnum = struct.unpack_from("<Q", head, 32)[0], *struct.unpack_from("<HH", head, 54)
            for i in range(min(phnum, 64)):
                f.seek(phoff + i * phentsize)
                ph = f.read(56)
                if len(ph) == 56 and struct.unpack_from("<I", ph)[0] == 3:  # PT_INTERP
                    offset, size = struct.unpack_from("<Q", ph, 8)[0], struct.unpack_from("<Q", ph, 32)[0]
                    f.seek(offset)
                    interp = f.read(min(size, 4096)).rstrip(b"\0").decode()
                    return interp if interp.startswith("/") and os.path.isfile(interp) else None
    except (OSError, UnicodeDecodeError, struct.error):
        return None
    return None


SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def detect(state_dir: str | None = None, data_dir: str | None = None) -> Facts:
    """Read the facts off this machine. Cheap: a few stat calls, no commands."""
    state = state_dir or os.environ.get(STATE_ENV) or DEFAULT_STATE
    data = data_dir or os.environ.get(DATA_ENV) or DEFAULT_DATA
    setpriv = shutil.which("setpriv", path=SAFE_PATH) or "/usr/bin/setpriv"
    unshare = shutil.which("unshare", path=SAFE_PATH) or "/usr/bin/unshare"
    deps = setpriv_deps(setpriv) or (Facts.loader, Facts.setpriv_libs)
    more = setpriv_deps(unshare)
    if more and more[0] == deps[0]:
        deps = (deps[0], tuple(dict.fromkeys((*deps[1], *more[1]))))
    cgroups = detect_cgroups()
    return Facts(
        setpriv=setpriv,
        loader=deps[0],
        setpriv_libs=deps[1],
        unshare=unshare,
        tini=shutil.which("tini-static", path=SAFE_PATH) or "",
        term=term if re.fullmatch(r"[A-Za-z0-9._+-]{1,64}", term := os.environ.get("TERM", "")) else "xterm",
        device_cgroup=cgroups.version == 1 and cgroups.mount("devices") is not None,
        state_dir=check_dir(state, f"state dir (--state-dir or ${STATE_ENV})"),
        data_dir=check_dir(data, f"data dir (--data-dir or ${DATA_ENV})"),
        busybox=shutil.which("busybox", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/bin/busybox",
        cgroup_ns=os.path.exists("/proc/self/ns/cgroup"),
        cgroups=cgroups,
        apt_mirror=host_mirror(),
        resolv_conf=read_text("/etc/resolv.conf"),
        ids=read_ids(),
    )


def detect_cgroups(mountinfo: str = "/proc/self/mountinfo") -> CgroupFacts:
    """v2 if /sys/fs/cgroup itself is cgroup2 (unified); else v1, from the cgroup mounts below it."""
    v1: dict[str, str] = {}
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        fstype, _source, opts = [*line.split(" - ", 1)[1].split(), "", ""][:3]
        if fstype == "cgroup2" and point == CGROUP_ROOT:
            return _v2()
        if fstype == "cgroup" and os.path.dirname(point) == CGROUP_ROOT:
            for opt in opts.split(","):
                if opt in CGROUP_V1_CONTROLLERS:
                    v1.setdefault(opt, point)
    if not v1:
        return CgroupFacts(version=0, mounts=(), swap=False)
    memory = v1.get("memory")
    swap = memory is not None and os.path.exists(f"{memory}/memory.memsw.limit_in_bytes")
    return CgroupFacts(version=1, mounts=tuple((k, v1[k]) for k in CGROUP_V1_CONTROLLERS if k in v1), swap=swap)


def _v2() -> CgroupFacts:
    try:
        with open(f"{CGROUP_ROOT}/cgroup.controllers") as f:
            offered = f.read().split()
    except OSError:
        offered = []
    mounts = tuple((k, CGROUP_ROOT) for k in CGROUP_V2_CONTROLLERS if k in offered)
    # memory.swap.max comes with the memory controller where the kernel accounts swap (Debian's does)
    return CgroupFacts(version=2, mounts=mounts, swap="memory" in offered)


def read_ids() -> HostIds:
    from .hostids import read

    return read()


DEBIAN_FALLBACK = "http://deb.debian.org/debian"


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(65536)
    except OSError:
        return ""


def host_mirror() -> str:
    """The first Debian archive in the host's apt sources (one-line or deb822), else deb.debian.org."""
    import glob

    from .recipe import MIRROR_RE

    uris: list[str] = []
    for line in read_text("/etc/apt/sources.list").splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["deb"]:
            uris += [w for w in words[1:] if "://" in w][:1]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for line in read_text(path).splitlines():
            if line.startswith("URIs:"):
                uris += line.split()[1:2]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        for line in read_text(path).splitlines():
            words = line.split("#")[0].split()
            if words[:1] == ["deb"]:
                uris += [w for w in words[1:] if "://" in w][:1]
    # The main archive, not -security or a third party's: its path ends in /debian (or /ubuntu).
    for uri in uris:
        uri = uri.rstrip("/")
        if uri.rsplit("/", 1)[-1] in ("debian", "ubuntu") and MIRROR_RE.fullmatch(uri):
            return uri
    return DEBIAN_FALLBACK
