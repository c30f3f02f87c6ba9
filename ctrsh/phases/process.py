"""Phase process: start the container's PID 1, and only then let the image's code run.

The PID namespace is born here (its first process becomes PID 1), so /proc is
mounted by that process. PID 1 starts as the *host's* `sh`, with every
capability and the host's root still reachable, and does all the privileged
work with trusted tools before the image's first instruction:

  1. mount /proc; mask and make read-only the kernel interfaces a container
     must not touch (the host's `mount`, before pivot_root);
  2. pivot_root into the rootfs; unmount and remove the old root with the
     trusted busybox copy in /.ctrsh (never the image's `umount`);
  3. find the program in the container's PATH with shell builtins only;
  4. keep /.ctrsh open as fd 3, unmount it, and exec setpriv from that fd
     (through its loader, with its own libraries): it drops capabilities,
     sets no_new_privs and the user;
  5. the trusted busybox, now unprivileged, closes every fd above 2 (nothing
     the caller had open leaks in) and execs the command with a clean env.

Recipe values (cwd, PATH, env, args) only ever reach these scripts as
positional parameters; the script text is built from constants and validated
paths, each quoted.
"""

from __future__ import annotations

import os
import shlex

from ..facts import SAFE_PATH
from ..plan import Step
from . import Context, cgroups
from .security import TOOLS, setpriv_options, user_switch

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FD3 = "/proc/self/fd/3"  # the tools dir, still open after it is unmounted
NOFILE_DEFAULT = "1024:1024"  # RLIMIT_NOFILE as Docker sets it

# The last hop, run by the trusted busybox after setpriv: close every descriptor above 2, then exec
# busybox's env applet (via /proc/self/exe, as /.ctrsh is gone) to start the command with only the
# recipe's environment. $@ = VAR=VALUE... PROGRAM ARGS...
CLOSE_AND_EXEC = """for fd in /proc/self/fd/*; do
  fd=${fd##*/}
  if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
done
exec -a env /proc/self/exe -i "$@"
"""

# Find a program named without a '/' in the container's PATH ($search) with shell builtins, so that
# no image binary runs before privileges are dropped, and put its path in place of the name, which
# is positional parameter nvars+1.
RESOLVE = """eval "prog=\\${$((nvars + 1))}"
case $prog in
*/*) ;;
*)
  found=
  IFS=:
  for dir in $search; do
    if [ -f "${dir:-.}/$prog" ] && [ -x "${dir:-.}/$prog" ]; then found=${dir:-.}/$prog; break; fi
  done
  unset IFS
  if [ -z "$found" ]; then echo "ctrsh: $prog: not found in the container's PATH ($search)" >&2; exit 127; fi
  i=0
  for arg; do
    shift
    if [ "$i" -eq "$nvars" ]; then set -- "$@" "$found"; else set -- "$@" "$arg"; fi
    i=$((i + 1))
  done
  ;;
esac
"""


USERNS_FD = 'exec 4<"$1"; shift; exec "$@"'  # $1 the user namespace's file, then the command


def environment(c: Context) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root" if c.recipe.security.user is None else "/"}
    if c.hostname is not None:
        env["HOSTNAME"] = c.hostname
    if c.recipe.process.terminal:
        env["TERM"] = c.facts.term
    env.update(c.recipe.process.env)
    return env


def rlimit_lines(c: Context) -> list[str]:
    from ..recipe import RLIMIT_UNIT, RLIMITS

    limits = {"nofile": NOFILE_DEFAULT, **c.recipe.security.rlimits}
    lines = []
    for name, value in limits.items():
        unit = RLIMIT_UNIT.get(name, 1)
        soft, _, hard = value.partition(":")
        soft, hard = (v if v in ("", "unlimited") else str(int(v) // unit) for v in (soft, hard))
        flag = RLIMITS[name]
        # Both limits to the hard value first (root may raise it), then the soft one below it.
        lines.append(f"ulimit {flag} {shlex.quote(hard or soft)}")
        if hard and hard != soft:
            lines.append(f"ulimit -S {flag} {shlex.quote(soft)}")
    return lines


def kernel_path_lines(c: Context) -> list[str]:
    sec = c.recipe.security
    lines = []
    if sec.masked_paths:
        lines += [
            f"for p in {' '.join(map(shlex.quote, sec.masked_paths))}; do",
            '  if [ -d "$root$p" ]; then mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k ctrsh-masked "$root$p"',
            '  elif [ -e "$root$p" ]; then mount --bind "$root/dev/null" "$root$p"; fi',
            "done",
        ]
    if sec.readonly_paths:
        lines += [
            f"for p in {' '.join(map(shlex.quote, sec.readonly_paths))}; do",
            '  if [ -e "$root$p" ]; then',
            '    mount --bind "$root$p" "$root$p" && mount -o remount,bind,ro,nosuid,nodev,noexec "$root$p"',
            "  fi",
            "done",
        ]
    return lines


def init_prefix(c: Context) -> list[str]:
    """`process.init`: tini (the trusted copy, run from fd 3 after the privilege drop) becomes PID 1
    and runs the last hop as its child, which closes fd 3 and everything else before the command.
    tini keeps fd 3 (the detached copies' tmpfs, used by nothing else). -s: without a PID namespace
    it is not PID 1, so it registers as the subreaper of the command's orphans instead."""
    if not c.recipe.process.init:
        return []
    return [f"{FD3}/{os.path.basename(c.facts.tini)}", *([] if "pid" in c.namespaces else ["-s"]), "--"]


def start_script(c: Context) -> str:
    """PID 1's script: $1 rootfs, $2 cwd, $3 the container's PATH, $4 how many VAR=VALUE follow,
    then those, then the command."""
    loader = os.path.basename(c.facts.loader)
    run = [f"{FD3}/{loader}", "--inhibit-cache", "--library-path", FD3]  # a tool copy, with its own libraries
    setpriv = shlex.join(
        [*run, f"{FD3}/setpriv", *setpriv_options(c), "--", *user_switch(c, run, FD3), *init_prefix(c),
         f"{FD3}/busybox", "sh", "-c", CLOSE_AND_EXEC, "ctrsh-exec"]
    )  # fmt: skip
    interactive = c.recipe.process.terminal
    stdin = [] if interactive else [
        "# No terminal: stdin is /dev/null unless it was a pipe or a file.",
        'if [ -t 0 ]; then exec <"$root/dev/null"; fi',
    ]  # fmt: skip
    proc_mounts = [
        "# Mounted from inside the new PID namespace, so it shows the container's processes only.",
        'mount -t proc -o nosuid,nodev,noexec proc "$root/proc"',
    ]
    if c.recipe.security.masked_paths or c.recipe.security.readonly_paths:
        proc_mounts.append(
            "# Kernel interfaces: masked ones show nothing (an empty read-only tmpfs, or /dev/null over a file); "
            "read-only ones cannot be written."
        )
        proc_mounts += kernel_path_lines(c)
    return "\n".join(
        [
            "set -f  # paths and PATH are split, never glob-expanded",
            "root=$1 cwd=$2 search=$3 nvars=$4",
            "shift 4",
            "# A closed stdin, stdout or stderr becomes /dev/null, as in Docker.",
            'for fd in 0 1 2; do if [ ! -e /proc/self/fd/$fd ]; then eval "exec $fd<>\\"\\$root/dev/null\\""; fi; done',
            *stdin,
            *proc_mounts,
            "# Resource limits, inherited by everything the container starts.",
            *rlimit_lines(c),
            "# Swap roots; the old one is detached with the trusted umount, not the image's.",
            *([] if c.userns else ['cd "$root"']),  # with a user ns, already there (sh's cd would walk the host path)
            "pivot_root . .oldroot",
            f"{TOOLS}/busybox umount -l /.oldroot",
            f"{TOOLS}/busybox rmdir /.oldroot 2>/dev/null || :",
            "# The working directory, made if the image lacks it (as Docker does).",
            f'if ! cd "$cwd" 2>/dev/null; then {TOOLS}/busybox mkdir -p "$cwd"; cd "$cwd"; fi',
            RESOLVE.rstrip("\n"),
            "# Keep the tools open as fd 3, unmount them, then drop privileges with setpriv run from that fd.",
            f"exec 3<{TOOLS}",
            f"{FD3}/busybox umount -l {TOOLS}",
            f"{FD3}/busybox rmdir {TOOLS} 2>/dev/null || :",
            f'exec {setpriv} "$@"',
            "",
        ]
    )


def start_argv(c: Context) -> tuple[str, ...]:
    """From the host: enter the namespaces, fork PID 1 of a new PID namespace, make it a session
    leader (no terminal of the caller's, or the container's own pty), run the start script."""
    proc = c.recipe.process
    env = environment(c)
    new = [f"--{k}" for k in ("pid", "cgroup") if k in c.namespaces]
    setsid = ("setsid", "--ctty") if proc.terminal else ("setsid",)
    # A user namespace: PID 1 is root inside it only, so it could not walk to its rootfs through the
    # host's root-only state dir; it is entered there first (as the host's root) and uses "." after.
    # Its file is bound in the host's mount namespace only: it is opened (fd 4) before entering the
    # container's and joined through /proc/self/fd/4 (PID 1 closes every fd above 2 before the command).
    userns = ("env", f"--chdir={c.paths.rootfs}", "nsenter", "--user=/proc/self/fd/4", "--")
    pid1 = (
        *(userns if c.userns else ()), "unshare", *new, "--fork", "--kill-child", "--",
        "env", "-i", "--default-signal", f"PATH={SAFE_PATH}", *setsid, "sh", "-euc", start_script(c), "ctrsh-start",
        "." if c.userns else c.paths.rootfs, proc.cwd, env["PATH"], str(len(env)),
        *(f"{k}={v}" for k, v in env.items()), *proc.args,
    )  # fmt: skip
    hold = ("sh", "-c", USERNS_FD, "ctrsh-userns-fd", c.paths.nsfile("user")) if c.userns else ()
    enter = (*cgroups.join_prefix(c), *hold, *c.nsenter("mount", "uts", "ipc", "net"))
    if not proc.terminal:
        return (*enter, *pid1)
    # script(1) makes a new pty (in the container's devpts: see the bind below), relays the caller's
    # terminal to it and passes window size changes on. It runs its command with $SHELL -c, so the
    # command is given as one string, every word quoted.
    relay = ("env", "-i", f"PATH={SAFE_PATH}", "SHELL=/bin/sh", "script", "--quiet", "--return", "--flush",
             "--command", "exec " + shlex.join(pid1), "/dev/null")  # fmt: skip
    return (*enter, *relay)


def steps(c: Context) -> list[Step]:
    out = []
    if c.recipe.process.terminal:
        out.append(
            Step(
                "process",
                (*c.nsenter("mount"), "mount", "--bind", f"{c.paths.rootfs}/dev/pts", "/dev/pts"),
                "Terminal: in the container's mount namespace (not the host's), put its own devpts at /dev/pts, "
                "so the pty script(1) opens through /dev/ptmx is one of the container's: `tty` names /dev/pts/0.",
            )
        )
    out.append(
        Step(
            "process",
            start_argv(c),
            "Enter the namespaces and fork PID 1 of a new PID namespace in a session of its own. As the host's "
            "sh it mounts /proc, masks kernel paths, pivot_roots, detaches the old root with trusted tools, "
            "then setpriv drops capabilities and busybox closes leaked fds before the command runs.",
            foreground=True,
        )
    )
    return out
