"""Host facts: everything compile needs to know about the machine, found before compiling.

Keeping this apart is what lets `compile` stay pure and plans be golden-tested.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from .errors import UsageError

STATE_ENV, DATA_ENV = "CTRSH_STATE_DIR", "CTRSH_DATA_DIR"
DEFAULT_STATE, DEFAULT_DATA = "/run/ctrsh", "/var/lib/ctrsh"


@dataclass(frozen=True)
class NetworkFacts:
    """What ctrsh's network registry holds for the recipe's bridge (ipam.survey reads it; compile stays pure)."""

    readable: bool = True  # False: the registry could not be read (plan without root): addresses are a guess
    leases: tuple[tuple[str, str], ...] = ()  # (address, container) held by live containers on the bridge
    ports: tuple[tuple[str, str], ...] = ()  # ("tcp-8080", container): host ports published by live containers
    subnet: str | None = None  # the subnet the bridge's current users set it up with
    routes: tuple[tuple[str, str], ...] = ()  # (destination, device): the host's routes, but default and the bridge's


@dataclass(frozen=True)
class Facts:
    state_dir: str = DEFAULT_STATE  # per-container runtime state: ns files, the writable layer
    data_dir: str = DEFAULT_DATA  # lasting data: built images; containers' writable layers while they run
    busybox: str = "/bin/busybox"  # the host's static busybox, copied into the busybox image
    cgroup_ns: bool = True  # the kernel has cgroup namespaces
    network: NetworkFacts = NetworkFacts()  # the bridge's leases, for mode bridge (see ipam.survey)


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
        """The `ip netns` name; prefixed so ctrsh never touches a namespace it did not create."""
        return f"ctrsh-{self.name}"

    @property
    def journal(self) -> str:
        return f"{self.state}/journal"

    @property
    def dev_template(self) -> str:
        return f"{self.facts.data_dir}/dev"

    def image(self, kind: str) -> str:
        return f"{self.facts.data_dir}/images/{kind}"


def check_dir(path: str, what: str) -> str:
    # ',' and ':' separate overlayfs options and layers, and mount(8) reads quotes and
    # backslashes in options: such a path cannot be a layer.
    norm = os.path.normpath(path)
    if not path.startswith("/") or norm == "/" or any(c in path for c in ",:\"'\\") or any(c.isspace() for c in path):
        raise UsageError(
            f"{what} must be an absolute path other than '/', without ',', ':', quotes, backslashes "
            f"or white space: {path!r}"
        )
    return norm


def detect(state_dir: str | None = None, data_dir: str | None = None) -> Facts:
    """Read the facts off this machine. Cheap: a few stat calls, no commands."""
    state = state_dir or os.environ.get(STATE_ENV) or DEFAULT_STATE
    data = data_dir or os.environ.get(DATA_ENV) or DEFAULT_DATA
    return Facts(
        state_dir=check_dir(state, f"state dir (--state-dir or ${STATE_ENV})"),
        data_dir=check_dir(data, f"data dir (--data-dir or ${DATA_ENV})"),
        busybox=shutil.which("busybox", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/bin/busybox",
        cgroup_ns=os.path.exists("/proc/self/ns/cgroup"),
    )
