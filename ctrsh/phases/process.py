"""Phase process: start the container's PID 1.

The PID namespace is born here (its first process becomes PID 1), so /proc is
mounted by that process; then pivot_root swaps the root and the old root is
unmounted from inside, where only the container's own binaries exist.
"""

from __future__ import annotations

from ..plan import Step
from . import Context, cgroups

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as PID 1 of the new PID namespace: the host's sh, so the host's mount
# and pivot_root. After pivot_root, commands resolve in the new root: umount
# and rmdir are the container's own. $1 = new root, $2 = cwd, the rest is the
# command. Recipe values only ever arrive as positional parameters.
START = """mount -t proc -o nosuid,nodev,noexec proc "$1/proc"
cd "$1"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
cd "$2"
shift 2
exec "$@"
"""


def environment(c: Context) -> list[str]:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root"}
    if c.hostname is not None:
        env["HOSTNAME"] = c.hostname
    env.update(c.recipe.process.env)
    return [f"{k}={v}" for k, v in env.items()]


def steps(c: Context) -> list[Step]:
    proc = c.recipe.process
    new = [f"--{k}" for k in ("pid", "cgroup") if k in c.namespaces]
    argv = (
        *cgroups.join_prefix(c),
        *c.nsenter("mount", "uts", "ipc", "net"),
        "unshare", *new, "--fork", "--kill-child", "--",
        "sh", "-euc", START, "ctrsh-start", c.paths.rootfs,
        proc.cwd, "env", "-i", *environment(c), *proc.args,
    )  # fmt: skip
    return [
        Step(
            "process",
            argv,
            "Enter the namespaces, fork PID 1 of a new PID namespace, mount its /proc, pivot_root into the "
            "rootfs, drop the old root, and exec the command with a clean environment.",
            foreground=True,
        )
    ]
