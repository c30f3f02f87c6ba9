"""iptables rules and shared host pieces as Steps, each with an idempotent undo.

Every rule carries `-m comment --comment ctrsh:NAME` (a container's own rule)
or `ctrsh:bridge/BRIDGE` (a rule all containers on a bridge share; '/' never
appears in a container name), so `iptables-save | grep ctrsh:` shows all of
ctrsh's rules and whose they are.

Shared pieces (the bridge, ip_forward, route_localnet, the subnet's
MASQUERADE, the bridge's FORWARD rules) are reference-counted in ctrsh's
network registry (ipam): the first user sets a piece up if it is not there
yet and notes that ctrsh made or changed it; the last user to leave undoes it,
and only then, and only if ctrsh made it. Both ends run under `flock` on the
state dir, so concurrent applies see a consistent count. Values reach the
scripts as positional parameters only.
"""

from __future__ import annotations

from . import ipam
from .facts import Facts
from .plan import Argv, Step

# Shared piece: $1 its registry dir, $2 this container, then the piece's own parameters.
_SHARE = """reg=$1 me=$2
shift 2
mkdir -p "$reg/users"
if [ -z "$(ls -A "$reg/users")" ]; then  # the first user sets it up, unless it is there already
{setup}
fi
: > "$reg/users/$me"
"""
_UNSHARE = """reg=$1 me=$2
shift 2
rm -f "$reg/users/$me"
if [ -z "$(ls -A "$reg/users" 2>/dev/null)" ]; then  # the last user out undoes what ctrsh did
  if [ -e "$reg/made" ]; then
{teardown}
  fi
  rm -f "$reg/made" "$reg/subnet"
  rmdir "$reg/users" "$reg" "${{reg%/*}}" 2>/dev/null || true
fi
"""


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.strip("\n").splitlines())


def _pair(setup: str, teardown: str) -> tuple[str, str]:
    return _SHARE.format(setup=_indent(setup, 2)), _UNSHARE.format(teardown=_indent(teardown, 4))


# $1 bridge, $2 gateway/prefix, $3 subnet (recorded, so a second recipe cannot reuse the bridge for another)
BRIDGE = {
    "ip": _pair(
        """if ! ip link show dev "$1" >/dev/null 2>&1; then
  ip link add "$1" type bridge
  ip addr add "$2" dev "$1"
  ip link set "$1" up
  : > "$reg/made"
fi
echo "$3" > "$reg/subnet\"""",
        """if ip link show dev "$1" >/dev/null 2>&1; then ip link delete "$1"; fi""",
    ),
    "brctl": _pair(
        """if ! ip link show dev "$1" >/dev/null 2>&1; then
  brctl addbr "$1"
  ip addr add "$2" dev "$1"
  ip link set "$1" up
  : > "$reg/made"
fi
echo "$3" > "$reg/subnet\"""",
        """if ip link show dev "$1" >/dev/null 2>&1; then ip link set "$1" down; brctl delbr "$1"; fi""",
    ),
}
# $1 sysctl key, $2 the value needed; "made" keeps the old value, restored by the last user.
SYSCTL = _pair(
    """old=$(sysctl -n "$1")
if [ "$old" != "$2" ]; then
  echo "$old" > "$reg/made"
  sysctl -q -w "$1=$2"
fi""",
    """if sysctl -n "$1" >/dev/null 2>&1; then sysctl -q -w "$1=$(cat "$reg/made")"; fi""",
)
# $1 table, $2 -A or -I, $3 chain, then the rule.
RULE = _pair(
    """t=$1 op=$2 ch=$3
shift 3
if ! iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then
  iptables -t "$t" "$op" "$ch" "$@"
  : > "$reg/made"
fi""",
    """t=$1 ch=$3
shift 3
if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi""",
)
# A container's own rule: delete it if it is there (so the undo can run twice).
RULE_UNDO = """t=$1 ch=$2
shift 2
if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
"""
LINK_UNDO = 'if ip link show dev "$1" >/dev/null 2>&1; then ip link delete "$1"; fi\n'


def locked(facts: Facts, script: str, label: str, *args: str) -> Argv:
    """Run script under the registry's lock (flock on the state dir), values as $1, $2, ..."""
    return ("flock", facts.state_dir, "sh", "-euc", script, label, *args)


def shared(facts: Facts, key: str, name: str, pair: tuple[str, str], why: str, *params: str) -> Step:
    reg = ipam.shared_dir(facts.state_dir, key)
    return Step(
        "network",
        locked(facts, pair[0], "ctrsh-share", reg, name, *params),
        why,
        undo=locked(facts, pair[1], "ctrsh-unshare", reg, name, *params),
    )


def rule(name: str, table: str, op: str, chain: str, *spec: str, why: str) -> Step:
    """A container's own rule, tagged with its name."""
    tagged = (*spec, "-m", "comment", "--comment", f"ctrsh:{name}")
    return Step(
        "network",
        ("iptables", "-t", table, op, chain, *tagged),
        why,
        undo=("sh", "-euc", RULE_UNDO, "ctrsh-undo", table, chain, *tagged),
    )


def shared_rule(facts: Facts, bridge: str, name: str, key: str, table: str, op: str, chain: str, *spec: str,
                why: str) -> Step:  # fmt: skip
    tagged = (*spec, "-m", "comment", "--comment", f"ctrsh:bridge/{bridge}")
    return shared(facts, f"{key}-{bridge}", name, RULE, why, table, op, chain, *tagged)
