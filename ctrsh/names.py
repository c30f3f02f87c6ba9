"""Names on a bridge: every container's /etc/hosts lists the other containers on the same bridge.

Docker gives containers on a user-defined network a DNS server that answers with
their names; ctrsh, with stock tools only, writes them into each container's own
/etc/hosts instead. That file is a host file in the container's state dir
(STATE/NAME/etc/hosts), bind-mounted over the image's, so it is rewritten in place
(`>` truncates the same inode: a new file would not be seen through the bind
mount, which holds the old one). The rewrite is one step, run under the registry's
lock (the one the leases are claimed under), so it sees a consistent set of leases:

    STATE/network/leases-BRIDGE/ADDRESS   names the container holding ADDRESS
    STATE/NAME/etc/hosts.base             NAME's own lines (localhost, its address and
                                          hostname): not bind-mounted, so the container
                                          cannot change what is written back for it

Every member's file becomes its base, then one line per other member. A container's
start runs it (with its own lease already claimed: it appears in the others' files
and they in its own); the undo runs it again without that container, so names go
as containers do. Only values ctrsh wrote are read: lease file names must be
addresses and their contents container names, or they are skipped.
"""

from __future__ import annotations

import os

from . import ipam
from .facts import Facts
from .plan import Argv, Step

MARK = "# ctrsh: the other containers on this bridge (kept current by ctrsh)"

# $1 state dir, $2 the bridge's leases dir, $3 a container leaving ("" when one starts), $4 the marker.
HOSTS = """state=$1 leases=$2 gone=$3 mark=$4
nl='
'
list=
for f in "$leases"/*; do
  [ -f "$f" ] || continue
  a=${f##*/}
  case $a in *[!0-9.]*) continue ;; esac
  m=
  read -r m <"$f" || true
  case $m in '' | *[!a-z0-9-]*) continue ;; esac
  [ "$m" != "$gone" ] && [ -d "$state/$m" ] || continue  # a lease of a container that is gone is free
  list="$list$a $m$nl"
done
IFS=$nl
set -f
for entry in $list; do
  d="$state/${entry#* }/etc"
  [ -f "$d/hosts.base" ] && [ -f "$d/hosts" ] || continue
  {
    while IFS= read -r line; do printf '%s\\n' "$line"; done <"$d/hosts.base"
    printf '%s\\n' "$mark"
    for other in $list; do
      [ "$other" = "$entry" ] || printf '%s\\t%s\\n' "${other% *}" "${other#* }"
    done
  } >"$d/hosts"
done
"""


def hosts_argv(facts: Facts, bridge: str, gone: str) -> Argv:
    from .firewall import locked

    state = facts.state_dir
    return locked(facts, HOSTS, "ctrsh-hosts", state, ipam.leases_dir(state, bridge), gone, MARK)


def step(facts: Facts, bridge: str, name: str) -> Step:
    return Step(
        "network",
        hosts_argv(facts, bridge, ""),
        f"Names: rewrite the /etc/hosts of every container on {bridge} (this one included) in place, from "
        "the leases, under the same lock: each lists the others by name. The undo rewrites them without this one.",
        undo=hosts_argv(facts, bridge, name),
    )


def leftover_hosts(facts: Facts, name: str) -> list[Argv]:
    """For `destroy`: rewrite the hosts files of the bridges `name` holds a lease on, without it (its
    ctrsh was killed after the names step ran and before its undo was journaled)."""
    reg = ipam.registry(facts.state_dir)
    out: list[Argv] = []
    for d in sorted(os.listdir(reg)) if os.path.isdir(reg) else []:
        if d.startswith("leases-") and any(_holder(f"{reg}/{d}/{a}") == name for a in os.listdir(f"{reg}/{d}")):
            out.append(hosts_argv(facts, d.removeprefix("leases-"), name))
    return out


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
