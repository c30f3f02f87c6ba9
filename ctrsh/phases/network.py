"""Phase network: configure the container's network namespace."""

from __future__ import annotations

from ..plan import Step
from . import Context


def steps(c: Context) -> list[Step]:
    if "net" not in c.namespaces:
        return []  # the host's network: nothing to set up
    return [
        Step(
            "network",
            ("ip", "-n", c.paths.netns, "link", "set", "lo", "up"),
            "Bring up loopback: a new network namespace starts with lo down.",
        )
    ]
