"""The recipe: what a user writes, as typed data, loaded with file:line:col errors.

The recipe is shaped by phase (rootfs, namespaces, process, …) so that later
sections (network, resources, mounts, security) slot in beside these.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import yaml

from . import schema
from .errors import Problem, RecipeError

Namespace = Literal["mount", "uts", "ipc", "pid", "net", "cgroup"]
ALL_NAMESPACES: tuple[Namespace, ...] = ("mount", "uts", "ipc", "pid", "net", "cgroup")

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # 63 at most
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_name(value: str) -> str | None:
    if len(value) > 63 or not NAME_RE.fullmatch(value):
        return (
            f"{value!r} is not a valid container name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (it names files, a network namespace and the hostname)"
        )
    return None


def check_hostname(value: str) -> str | None:
    # The kernel keeps at most 64 bytes of nodename (__NEW_UTS_LEN).
    if len(value) > 64 or not all(LABEL_RE.fullmatch(label) for label in value.split(".")):
        return (
            f"{value!r} is not a valid hostname: use at most 64 characters of letters, digits, "
            "'-' and '.', in dot-separated labels of at most 63 that start and end with a letter or digit"
        )
    return None


def check_args(value: list[str]) -> str | None:
    if not value:
        return "needs at least the program to run, e.g. [/bin/sh]"
    if not value[0]:
        return "the program (first item) is empty"
    # It is exec'd by `env`, which would read a leading '-' as an option and a '=' as a variable.
    if value[0].startswith("-") or "=" in value[0]:
        return f"the program (first item) {value[0]!r} cannot start with '-' or contain '='"
    return None


def check_env(value: dict[str, str]) -> str | None:
    bad = [k for k in value if not ENV_KEY_RE.fullmatch(k)]
    if bad:
        return f"{bad[0]!r} is not a valid variable name (letters, digits and '_', not starting with a digit)"
    return None


def check_cwd(value: str) -> str | None:
    return None if value.startswith("/") else f"{value!r} must be an absolute path inside the container"


def check_namespaces(value: list[str]) -> str | None:
    dupes = sorted({n for n in value if value.count(n) > 1})
    if dupes:
        return f"{dupes[0]!r} is listed twice"
    if "mount" not in value:
        return "'mount' is required: without its own mount namespace, pivot_root would change the host's root"
    return None


@dataclass(frozen=True)
class Busybox:
    """A tiny root filesystem made from the host's static busybox (package busybox-static),
    built once into ctrsh's data dir with relative applet links, then shared read-only."""


@dataclass(frozen=True)
class Rootfs:
    """Where the container's root filesystem comes from. Set exactly one source."""

    one_of: ClassVar[bool] = True
    busybox: Busybox | None = field(default=None, metadata={"doc": "Build from the host's busybox-static."})


@dataclass(frozen=True)
class Process:
    """The program the container runs as its PID 1."""

    args: list[str] = field(
        metadata={"doc": "Program and arguments, run with exec (no shell unless you name one).", "check": check_args}
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata={"doc": "Environment variables, added to PATH, HOME and HOSTNAME.", "check": check_env},
    )
    cwd: str = field(default="/", metadata={"doc": "Working directory inside the container.", "check": check_cwd})


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

    name: str = field(metadata={"doc": "Container name: lowercase letters, digits and '-'.", "check": check_name})
    rootfs: Rootfs = field(metadata={"doc": "Where the root filesystem comes from."})
    process: Process = field(metadata={"doc": "What runs inside."})
    hostname: str | None = field(
        default=None,
        metadata={"doc": "Hostname inside (needs the uts namespace). Default: the name.", "check": check_hostname},
    )
    namespaces: list[Namespace] | None = field(
        default=None,
        metadata={
            "doc": "Namespaces to create. Default: all of mount, uts, ipc, pid, net, and cgroup where the host has it.",
            "check": check_namespaces,
        },
    )
    network: Network | None = field(
        default=None, metadata={"doc": "Networking: mode none (default), host or bridge, with NAT and published ports."}
    )
    # Bookkeeping, not recipe keys: where each value was written (dotted path ->
    # line, col), so problems found after loading (in compile) still point at the text.
    positions: dict[str, schema.Pos] = field(default_factory=dict, compare=False, repr=False, metadata=schema.INTERNAL)
    file: str = field(default="<recipe>", compare=False, repr=False, metadata=schema.INTERNAL)

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
    loader = _loader()(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            what = " ".join(x for x in (e.context, e.problem) if x)
            raise RecipeError([Problem(file, line, col, f"YAML syntax error: {what}")]) from None
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
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise RecipeError([Problem(path, 1, 1, f"cannot read recipe: {reason}")]) from None
    return parse(text, path)


def recipe_schema() -> dict[str, Any]:
    out = schema.json_schema(Recipe)
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "ctrsh recipe", **out}
    return out
