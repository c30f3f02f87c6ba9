"""Phase namespaces: create the container's namespaces and keep them alive as files.

Like `ip netns`, each namespace is bound to a file, so every later step is an
independent host command that enters it with `nsenter` — which is what lets
each step be printed, re-run, undone and exported on its own.
"""

from __future__ import annotations

from ..plan import Step
from . import NSFILE, Context


def steps(c: Context) -> list[Step]:
    p = c.paths
    persisted = [k for k in ("mount", "uts", "ipc") if k in c.namespaces]
    files = [p.nsfile(NSFILE[k]) for k in persisted]
    out = [
        Step(
            "namespaces",
            ("mkdir", "-p", c.facts.state_dir),
            "ctrsh's runtime state lives here (removed again when no container uses it).",
            undo=("rmdir", "--ignore-fail-on-non-empty", c.facts.state_dir),
        ),
        Step(
            "namespaces",
            ("mkdir", p.state, p.ns),
            "This container's state; mkdir fails if it exists, so two containers never share a name.",
            undo=("rm", "-rf", "--one-file-system", p.state),
        ),
        Step(
            "namespaces",
            ("mount", "--bind", "--make-private", p.ns, p.ns),
            "A private mount point to hold namespace files: the kernel refuses them under a shared mount.",
            undo=("umount", p.ns),
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
    flags = [f"--{k}={f}" for k, f in zip(persisted, files)]
    out.append(
        Step(
            "namespaces",
            ("unshare", *flags, "--propagation", "private", "true"),
            "Create the namespaces and bind each to its file; `true` exits at once, the files keep them. "
            "Private propagation: no mount made inside ever reaches the host.",
            undo=("umount", *files),
        )
    )
    if c.hostname is not None:
        out.append(
            Step(
                "namespaces",
                (*c.nsenter("uts"), "hostname", c.hostname),
                "Set the hostname in the container's own UTS namespace; the host's is untouched.",
            )
        )
    return out
