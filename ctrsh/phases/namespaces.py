"""Phase namespaces: create the container's namespaces and keep them alive as files.

Like `ip netns`, each namespace is bound to a file, so every later step is an
independent host command that enters it with `nsenter` — which is what lets
each step be printed, re-run, undone and exported on its own.
"""

from __future__ import annotations

from .. import owner
from ..plan import Step
from . import NSFILE, Context


def steps(c: Context) -> list[Step]:
    p = c.paths
    persisted = [k for k in ("mount", "uts", "ipc") if k in c.namespaces]
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
    if c.hostname is not None:
        command: tuple[str, ...] = ("hostname", c.hostname)
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
    return out
