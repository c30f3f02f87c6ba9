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
)


def notes(c: Context) -> tuple[str, ...]:
    out = list(NOTES)
    if not c.facts.device_cgroup:
        out.append(
            "devices: this host has no cgroup v1 devices controller (cgroup v2 needs an eBPF program, which no "
            "stock tool loads), so the container loses CAP_MKNOD and its root is mounted nodev instead."
        )
    return tuple(out)


def tool_files(c: Context) -> tuple[str, ...]:
    return (c.facts.busybox, c.facts.setpriv, c.facts.loader, *c.facts.setpriv_libs)


def steps(c: Context) -> list[Step]:
    root = c.paths.rootfs
    inside = c.nsenter("mount")
    return [
        Step(
            "security",
            (*inside, "mount", "-t", "tmpfs", "-o", "mode=0700,size=16m,nosuid,nodev", "ctrsh-tools", f"{root}{TOOLS}"),
            "A private tmpfs for trusted copies of host tools: after pivot_root the image's own binaries are "
            "all there is, and none may run before privileges are dropped.",
        ),
        Step(
            "security",
            (*inside, "cp", *tool_files(c), f"{root}{TOOLS}/"),
            "Copy in the host's static busybox (umount, rmdir, env for PID 1) and setpriv with its libraries "
            "and loader (setpriv drops capabilities; busybox's own setpriv cannot drop the bounding set).",
        ),
    ]


def setpriv_options(c: Context) -> list[str]:
    """What setpriv sets before exec'ing the container's command: Docker's defaults unless the recipe says."""
    sec = c.recipe.security
    caps = [cap for cap in sec.caps() if cap != "mknod" or c.facts.device_cgroup]
    opts = [
        "--bounding-set=" + ",".join(["-all", *(f"+{cap}" for cap in caps)]),
        "--inh-caps=-all",
        "--ambient-caps=-all",
    ]
    if sec.user is not None:
        uid, _, gid = sec.user.partition(":")
        opts += [f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]
    if sec.no_new_privileges:
        opts.append("--no-new-privs")
    return opts
