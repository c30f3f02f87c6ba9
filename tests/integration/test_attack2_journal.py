"""Attack 2, destroy's journal check: entries of a known shape whose parameters do harm.

Each test FAILS while the hole it names exists (see attack2_notes.md).
"""

from __future__ import annotations

import pytest

from ctrsh import firewall, ipam, owner
from ctrsh.facts import Facts, Paths

FACTS = Facts(state_dir="/tmp/ctrsh-a2-state", data_dir="/tmp/ctrsh-a2-data")
PATHS = Paths(FACTS, "web")

CRAFTED = {
    # deletes the host's own rule (here: the one that lets ssh in under a DROP policy)
    "any-iptables-rule": ("forward-out-ctrsh0", firewall.RULE[1],
                          ("filter", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")),
    # `ip link delete` of any link (a VPN, a VLAN, another tool's bridge) once the registry's users are gone
    "any-link": ("bridge-ctrsh0", firewall.BRIDGE["ip"][1], ("wg0", "10.0.0.1/24", "10.0.0.0/24")),
    # any sysctl, set to whatever the registry's `made` holds
    "any-sysctl": ("ip_forward", firewall.SYSCTL[1], ("net.ipv4.conf.all.rp_filter", "1")),
}  # fmt: skip


@pytest.mark.xfail(
    strict=True,
    reason="known gap (needs a root-written journal): shared-piece undos are checked by shape, not parameters",
)
@pytest.mark.parametrize("case", list(CRAFTED))
def test_shared_teardowns_are_known_only_with_their_own_parameters(case: str) -> None:
    """LOW (needs a root-written journal: defence in depth). owner._network_undo accepts any
    `ctrsh-unshare` teardown whose registry dir and user match, whatever follows: the parameters
    (table/chain/rule, link name, sysctl key) are never compared with what the phase would make."""
    key, script, params = CRAFTED[case]
    undo = firewall.locked(FACTS, script, "ctrsh-unshare", ipam.shared_dir(FACTS.state_dir, key), "web", *params)
    assert not owner.known_undo(undo, PATHS), f"destroy would run: {undo[-len(params) :]}"
