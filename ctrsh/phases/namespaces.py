"""Phase namespaces: create the container's namespaces and keep them alive as files.

Like `ip netns`, each namespace is bound to a file, so every later step is an
independent host command that enters it with `nsenter` — which is what lets
each step be printed, re-run, undone and exported on its own.
"""

from __future__ import annotations

from .. import owner
from ..plan import Step
from . import NSFILE, Context

# The maps of a user namespace bound to a file ($1) are written, once, by the host's root to
# /proc/PID/uid_map of a process inside it: a sh that joins it (keeping host root's credentials: no
# id is mapped yet), says its pid and waits (10 s at most) until its gid_map is written; if a write
# fails it is killed. $2 and $3 are the maps, one line each range.
WRITE_MAPS = """nsenter --user="$1" --preserve-credentials -- sh -c '
  echo $$
  i=0
  while [ -z "$(cat /proc/$$/gid_map)" ] && [ $((i += 1)) -lt 1000 ]; do sleep 0.01; done' | {
  read -r pid
  if ! { printf "%s\\n" "$2" >"/proc/$pid/uid_map" && printf "%s\\n" "$3" >"/proc/$pid/gid_map"; }; then
    kill "$pid"
    exit 1
  fi
}"""


def notes(c: Context) -> tuple[str, ...]:
    if not c.userns:
        return ()
    uid, gid = c.root_ids()
    from ..recipe import parse_idmap

    low = [line for line in (*c.idmaps[0], *c.idmaps[1]) if parse_idmap([line])[0][1] < 65536]
    warn = (
        (f"user namespace: the map puts container ids on host ids below 65536 ({'; '.join(low)}), where host "
         "accounts live: a host user with one of those ids could signal or trace the container's processes and "
         "read what they own. Docker's userns-remap takes a range above them (/etc/subuid).",)
        if low
        else ()
    )  # fmt: skip
    return (
        *warn,
        *((c.idmap_note,) if c.idmap_note else ()),
        f"user namespace: root inside is host uid {uid} (gid {gid}), with capabilities over the container's own "
        "namespaces only. The image is used through a copy with its owners shifted by the maps (made once per "
        "image and maps, in DATA/images/IMAGE.shift-HASH: its size again on disk, and the time to copy it). An "
        "idmapped mount (mount -o X-mount.idmap=..., util-linux >= 2.39, kernel >= 5.12 with overlayfs >= 5.19) "
        "would show the image shifted without a copy; this host's util-linux 2.38 has no way to make one from "
        "the command line, so ctrsh copies.",
        "user namespace: bind volumes are used as they are: their host files appear as their mapped ids, and "
        "as nobody (65534) where the map has no id for their owner, so root inside may not be able to write "
        "them. /etc/hosts, hostname and resolv.conf are host root's (nobody inside: readable, not writable).",
        "user namespace: the network namespace is the host's root's (ip netns add), not the user namespace's: "
        "root inside has no capability over it, so binding ports below 1024 and raw sockets are refused. /sys is "
        "mounted by the host's root for the same reason (a sysfs mount from inside needs a net ns it owns).",
    )


def userns_steps(c: Context) -> list[Step]:
    """`user`: the maps, then the hostname (host root may: it has every capability in a child user ns)."""
    uids, gids = c.idmaps
    out = [
        Step(
            "namespaces",
            ("sh", "-c", WRITE_MAPS, "ctrsh-idmap", c.paths.nsfile("user"), "\n".join(uids), "\n".join(gids)),
            f"Write the user namespace's maps: container ids -> host ids, uid {'; '.join(uids)}, gid "
            f"{'; '.join(gids)}. Root inside is host uid {c.root_ids()[0]}: nobody special on the host.",
        )
    ]
    if c.hostname is not None:
        out.append(
            Step(
                "namespaces",
                ("nsenter", f"--uts={c.paths.nsfile('uts')}", "--", "hostname", c.hostname),
                "Set the hostname inside the UTS namespace (the host's is untouched).",
            )
        )
    return out


def steps(c: Context) -> list[Step]:
    p = c.paths
    # The user namespace first: made in the same unshare call, it owns the others.
    persisted = [k for k in ("user", "mount", "uts", "ipc") if k in c.namespaces]
    files = [p.nsfile(NSFILE[k]) for k in persisted]
    out = [
        Step(
            "namespaces",
            ("mkdir", "-p", "-m", "0700", c.facts.state_dir),
            "ctrsh's runtime state lives here, private to root (0700); made only if missing, "
            "and then removed once no container uses it.",
            undo=("rmdir", "--ignore-fail-on-non-empty", c.facts.state_dir),
            creates=c.facts.state_dir,
        ),
        Step(
            "namespaces",
            ("mkdir", "-m", "0700", p.state, p.ns, p.rootfs),
            "This container's state, private to root: its namespace files and its root mount point. "
            "mkdir fails if it exists, so two containers never share a name.",
            undo=("rm", "-rf", "--one-file-system", p.state),
        ),
        owner.mark_step("namespaces", p.state, p),
        Step(
            "namespaces",
            ("mount", "--bind", "--make-private", p.ns, p.ns),
            "A private mount point to hold namespace files: the kernel refuses them under a shared mount.",
            undo=("umount", "--recursive", p.ns),  # also drops the namespace files bound inside it
        ),
        Step("namespaces", ("touch", *files), "Empty files that namespaces will be bound to, keeping them alive."),
    ]
    if "net" in c.namespaces:
        out.append(
            Step(
                "namespaces",
                ("ip", "netns", "add", p.netns),
                f"A network namespace, kept alive at /run/netns/{p.netns}: only lo, and it is down.",
                undo=("ip", "netns", "delete", p.netns),
            )
        )
    flags = [f"--{k}={f}" for k, f in zip(persisted, files, strict=True)]
    if c.userns:
        # No id is mapped until the next step: a command run now would have no capabilities.
        command: tuple[str, ...] = ("true",)
        then = "`true` exits at once; the files keep them alive. The user namespace is made first and owns the others"
    elif c.hostname is not None:
        command = ("hostname", c.hostname)
        then = "then set the hostname inside them (the host's is untouched)"
    else:
        command, then = ("true",), "`true` exits at once; the files keep them alive"
    out.append(
        Step(
            "namespaces",
            ("unshare", *flags, "--propagation", "private", *command),
            f"Create the namespaces, bind each to its file, {then}. "
            "Private propagation: no mount made inside ever reaches the host.",
        )
    )
    if c.userns:
        out += userns_steps(c)
    return out
