"""Phase security: bring in the trusted tools that drop the container's privileges.

After pivot_root only the image's binaries exist, and an image is untrusted:
none of its binaries may run while the container still has every capability
or while the host's root is reachable at /.oldroot. So the host's own setpriv
(with its libraries and loader) and static busybox come along as copies on a
private tmpfs at ROOTFS/.ctrsh. PID 1 runs them by path, never through $PATH,
and unmounts them before the container's command starts (phases/process.py).
"""

from __future__ import annotations

from ..plan import Step
from . import Context

TOOLS = "/.ctrsh"  # where the copies are, inside the container, until PID 1 unmounts them

NOTES = (
    "seccomp: not applied. Docker filters ~50 system calls with seccomp; no stock command-line tool loads a "
    "seccomp filter, so ctrsh relies on dropped capabilities, no_new_privs and read-only/masked kernel paths.",
    "keyrings: root inside shares host root's user keyring (keyrings are per uid; Docker's seccomp profile "
    "blocks keyctl and add_key, and only that or a user namespace would separate them).",
)


def notes(c: Context) -> tuple[str, ...]:
    # With a user namespace root inside is another host uid, with keyrings of its own.
    out = [n for n in NOTES if not (c.userns and n.startswith("keyrings:"))]
    if not c.facts.device_cgroup:
        out.append(
            "devices: this host has no cgroup v1 devices controller (cgroup v2 needs an eBPF program, which no "
            "stock tool loads), so the container loses CAP_MKNOD and its root is mounted nodev instead."
        )
    if extra := switch_caps(c):
        out.append(
            f"user: the bounding set keeps {', '.join(extra)}, which switching to the user needs after the "
            "drop; as a non-root user the container has them in no other set"
            + ("." if c.recipe.security.no_new_privileges else ", and without no_new_privs a setuid binary could.")
        )
    return tuple(out)


def tool_files(c: Context) -> tuple[str, ...]:
    user = (c.facts.unshare,) if c.recipe.security.user is not None else ()
    init = (c.facts.tini,) if c.recipe.process.init else ()
    return (c.facts.busybox, c.facts.setpriv, *user, *init, c.facts.loader, *c.facts.setpriv_libs)


def steps(c: Context) -> list[Step]:
    root = c.paths.rootfs
    inside = c.nsenter("mount")
    return [
        Step(
            "security",
            (*inside, "mount", "-t", "tmpfs", "-o", "mode=0755,size=16m,nosuid,nodev", "ctrsh-tools", f"{root}{TOOLS}"),
            "A private tmpfs for trusted copies of host tools: after pivot_root the image's own binaries are "
            "all there is, and none may run before privileges are dropped.",
        ),
        Step(
            "security",
            (*inside, "cp", *tool_files(c), f"{root}{TOOLS}/"),
            "Copy in the host's static busybox (umount, rmdir, env for PID 1) and setpriv with its libraries "
            "and loader (setpriv drops capabilities; busybox's own setpriv cannot drop the bounding set)"
            + ("; unshare switches to the recipe's user by number." if c.recipe.security.user else "."),
        ),
    ]


def switch_caps(c: Context) -> tuple[str, ...]:
    """Capabilities the user switch needs that the recipe dropped: they stay in the bounding set only
    (a non-root process has none in effect; with no_new_privs nothing can raise them again)."""
    if c.recipe.security.user is None:
        return ()
    return tuple(cap for cap in ("setgid", "setuid") if cap not in c.recipe.security.caps())


def user_switch(c: Context, run: list[str], tools: str) -> list[str]:
    """`security.user`: after setpriv, util-linux unshare (no namespace) sets gid, no supplementary
    groups, then uid. Not setpriv's --reuid: it looks names up first, and a lookup in the image's
    /etc/passwd (or an NSS module it names) by a process with capabilities is the image's to steer."""
    if c.recipe.security.user is None:
        return []
    uid, _, gid = c.recipe.security.user.partition(":")
    return [*run, f"{tools}/unshare", f"--setgid={gid or uid}", f"--setuid={uid}", "--"]


def setpriv_options(c: Context) -> list[str]:
    """What setpriv sets before exec'ing the container's command: Docker's defaults unless the recipe says."""
    sec = c.recipe.security
    caps = [cap for cap in sec.caps() if cap != "mknod" or c.facts.device_cgroup]
    caps += [cap for cap in switch_caps(c) if cap not in caps]
    opts = [
        "--bounding-set=" + ",".join(["-all", *(f"+{cap}" for cap in caps)]),
        "--inh-caps=-all",
        "--ambient-caps=-all",
    ]
    if sec.no_new_privileges:
        opts.append("--no-new-privs")
    return opts
