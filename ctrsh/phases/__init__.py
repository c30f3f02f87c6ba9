"""One module per phase; each turns a resolved Context into that phase's Steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..facts import Facts, Paths
from ..netconfig import NetConfig
from ..recipe import Namespace, Recipe


@dataclass(frozen=True)
class Context:
    """The recipe with its defaults resolved against the host facts."""

    recipe: Recipe
    facts: Facts
    paths: Paths
    namespaces: frozenset[Namespace]
    hostname: str | None  # None: no uts namespace, the hostname is left alone
    network: NetConfig = field(default_factory=lambda: NetConfig("none"))  # the resolved `network:` section
    # With `user`: (uid_map, gid_map) as the kernel's lines, the default chosen from the host's ids
    # (hostids.default_maps), and how it was chosen.
    idmaps: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    idmap_note: str = ""

    def nsenter(self, *kinds: Namespace) -> tuple[str, ...]:
        """`nsenter` into the container's persisted namespaces of these kinds (those it has)."""
        args = ["nsenter"]
        for kind in kinds:
            if kind == "net" and self.network.join:  # mode container: the other container's network
                args.append(f"--net=/run/netns/{self.network.join}")
                continue
            if kind not in self.namespaces:
                continue
            if kind == "net":
                args.append(f"--net=/run/netns/{self.paths.netns}")
            else:
                args.append(f"--{kind}={self.paths.nsfile(NSFILE[kind])}")
        return (*args, "--")

    @property
    def userns(self) -> bool:
        return "user" in self.namespaces

    def root_ids(self) -> tuple[int, int]:
        """The host uid and gid of root inside: 0, 0 without a user namespace."""
        if not self.userns:
            return 0, 0
        from ..recipe import map_id, parse_idmap

        uids, gids = self.idmaps
        return map_id(parse_idmap(uids), 0) or 0, map_id(parse_idmap(gids), 0) or 0


# Namespace kind -> the file name that keeps it alive (as in /proc/PID/ns/).
NSFILE: dict[str, str] = {"mount": "mnt", "uts": "uts", "ipc": "ipc", "user": "user"}
