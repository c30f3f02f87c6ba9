"""Detached containers and what a user does with them: ps, exec, logs, stop.

`apply -d` runs the plan's steps like `apply`, but the container's start step
runs under a *holder*: a few lines of `sh`, started with `setsid --fork` in a
session of its own, that

  - sends the container's output to STATE/NAME/log,
  - keeps the name's lock (inherited on fd 9) for as long as PID 1 lives,
  - writes the start command's pid to STATE/NAME/pid, waits for it, and writes
    its exit code to STATE/NAME/exit.

So what stays on the host per container is that `sh` (and util-linux `unshare`,
PID 1's parent, which any container has): stock tools, no Python. ctrsh exits;
the journal stays in the state dir, and `ctrsh stop` / `ctrsh destroy` run its
undos later, like `destroy` after a crash.

Each command here prints what it runs, as `apply` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import time
from dataclasses import dataclass

from . import lock, procs
from .errors import CtrshError
from .facts import SAFE_PATH, Facts, Paths
from .plan import Argv, Step
from .trace import Trace

# $1 the state dir, $2 the lock file, then the container's start command. The lock arrives open on
# fd 9 (from `apply -d`; `flock -n` then keeps it — or takes it, run by hand with `9<>LOCK`); the
# container does not get it. $! is the start command; its exit code (128+N for a signal) is kept.
HOLDER = """s=$1 lock=$2
shift 2
exec </dev/null >>"$s/log" 2>&1
flock -n 9 || { echo "ctrsh: $lock is held by another process" >&2; exit 125; }
echo $$ >"$lock"
"$@" 9>&- &
echo $! >"$s/pid"
wait $!
echo $? >"$s/exit\""""

LOG, PID, EXIT, COMMAND = "log", "pid", "exit", "command"


def holder_step(start: Step, paths: Paths) -> Step:
    """The container's start step, run detached under the holder."""
    lockfile = lock.lock_path(paths.facts.state_dir, paths.name)
    return Step(
        "process",
        ("setsid", "--fork", "sh", "-c", HOLDER, "ctrsh-holder", paths.state, lockfile, *start.argv),
        "Detached: a holder shell in a session of its own keeps the name's lock (fd 9), sends the "
        f"container's output to {paths.state}/{LOG}, and records its exit code in {paths.state}/{EXIT}.",
    )


def command_step(paths: Paths, args: list[str]) -> Step:
    from .phases.cgroups import WRITE

    return Step(
        "process",
        ("sh", "-c", WRITE, "ctrsh-write", shlex.join(args), f"{paths.state}/{COMMAND}"),
        "The container's command, for `ctrsh ps`.",
    )


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    text = _read(f"/proc/{pid}/task/{pid}/children") or ""
    return [int(p) for p in text.split()]


def _in_cgroup(pid: int, paths: Paths) -> bool:
    """Is pid one of the container's (not a reused pid)? Its cgroup path ends in PARENT/NAME."""
    from .phases.cgroups import parent_name

    mine = f"/{parent_name(paths.facts)}/{paths.name}"
    return any(line.endswith(mine) or f"{mine}/" in line for line in (_read(f"/proc/{pid}/cgroup") or "").splitlines())


@dataclass(frozen=True)
class Status:
    name: str
    state: str  # running, exited N, or stopped (no process and no exit code: its ctrsh was killed)
    pid: int | None  # PID 1, on the host
    started: float | None  # epoch seconds
    command: str
    detached: bool
    group: str | None = None  # the group (a recipe's `containers:`) it was started in

    @property
    def running(self) -> bool:
        return self.state == "running"


def pid1(paths: Paths) -> int | None:
    """The container's PID 1 on the host: the child of its `unshare --fork`, or, for a foreground
    apply, the init of its PID namespace (or the first process in its mount namespace)."""
    start = _read(f"{paths.state}/{PID}")
    if start and start.isdigit():
        kids = _children(int(start))
        return kids[0] if kids else None
    pids = procs.container_pids(paths.nsfile("mnt"))
    inits = [p for p in pids if procs.is_init(p)]
    found = inits or sorted(pids)
    return found[0] if found else None


def _started(pid: int) -> float | None:
    stat = _read(f"/proc/{pid}/stat")
    uptime = _read("/proc/uptime")
    if not stat or not uptime:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return time.time() - float(uptime.split()[0]) + ticks / os.sysconf("SC_CLK_TCK")


def status(facts: Facts, name: str) -> Status:
    paths = Paths(facts, name)
    running = lock.is_held(lock.lock_path(facts.state_dir, name))
    detached = os.path.exists(f"{paths.state}/{PID}")
    pid = pid1(paths) if running else None
    command = _read(f"{paths.state}/{COMMAND}")
    if command is None and pid:
        raw = _read_bytes(f"/proc/{pid}/cmdline")
        command = shlex.join(a.decode(errors="replace") for a in raw.split(b"\0")[:-1]) if raw else "?"
    code = _read(f"{paths.state}/{EXIT}")
    if running:
        state = "running"
    elif code is not None and code.isdigit():
        state = f"exited {code}"
    else:
        state = "stopped"
    group = (_read(f"{paths.state}/group") or "").partition(" ")[0] or None  # group.GROUP_FILE
    return Status(name, state, pid, _started(pid) if pid else None, command or "?", detached, group)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def names(facts: Facts) -> list[str]:
    """The containers of this state dir: its subdirs, and names whose lock is held."""
    from .recipe import check_name

    found = set()
    with contextlib.suppress(OSError):
        found |= {n for n in os.listdir(facts.state_dir) if os.path.isdir(f"{facts.state_dir}/{n}")}
    parent, base = os.path.split(facts.state_dir)
    try:
        for n in os.listdir(parent):
            if n.startswith(base + ".") and n.endswith(".lock"):
                found.add(n[len(base) + 1 : -len(".lock")])
    except OSError:
        pass
    from .ipam import registry

    found.discard(os.path.basename(registry(facts.state_dir)))  # the network registry, not a container
    return sorted(n for n in found if not check_name(n))


def uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def render_ps(rows: list[Status], as_json: bool) -> str:
    now = time.time()
    if as_json:
        out = [
            {"name": r.name, "state": r.state, "pid": r.pid, "started": r.started,
             "uptime": (now - r.started) if r.started else None, "command": r.command, "detached": r.detached,
             "group": r.group}
            for r in rows
        ]  # fmt: skip
        return json.dumps(out, indent=2) + "\n"
    grouped = any(r.group for r in rows)  # a GROUP column only when some container is in one
    table = [("NAME", *(("GROUP",) if grouped else ()), "STATE", "PID", "UPTIME", "COMMAND")]
    for r in rows:
        up = uptime(now - r.started) if r.started else "-"
        table.append((r.name, *((r.group or "-",) if grouped else ()), r.state, str(r.pid or "-"), up, r.command))
    k = len(table[0]) - 1
    widths = [max(len(t[i]) for t in table) for i in range(k)]
    return "".join(
        "  ".join(v.ljust(w) for v, w in zip(t[:k], widths, strict=True)) + "  " + t[k] + "\n" for t in table
    )


def wait_running(paths: Paths, timeout: float = 30.0) -> int | None:
    """After the holder started: until PID 1 has left the host's root (pivot_root), or the
    container ended (None)."""
    root = os.stat("/")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(f"{paths.state}/{EXIT}"):
            return None
        pid = pid1(paths)
        if pid:
            try:
                st = os.stat(f"/proc/{pid}/root")
                if (st.st_dev, st.st_ino) != (root.st_dev, root.st_ino):
                    return pid
            except OSError:
                pass
        time.sleep(0.005)
    raise CtrshError(f"the container did not start within {timeout:g} s: see `ctrsh logs {paths.name}`")


def run(argv: Argv, trace: Trace) -> None:
    from .engine import run_step

    trace.command(shlex.join(argv))
    run_step(argv)


def stop(facts: Facts, name: str, grace: float, trace: Trace) -> bool:
    """As `docker stop`: SIGTERM to PID 1, then after the grace time SIGKILL to everything in the
    container's cgroup. A PID 1 of a PID namespace without a SIGTERM handler never gets it (the kernel
    drops it), so it is killed at once. False if it was not running."""
    from .phases import cgroups

    paths = Paths(facts, name)
    lockfile = lock.lock_path(facts.state_dir, name)
    if not lock.is_held(lockfile):
        return False
    pid = pid1(paths)
    if not os.path.exists(f"{paths.state}/{PID}"):
        # a foreground apply: it stops its container and rolls back itself on SIGTERM
        owner = lock.holder(lockfile)
        if owner:
            trace.note(f"stop: {name} runs in the foreground of ctrsh apply (pid {owner}): SIGTERM, it rolls back")
            run(("kill", "-TERM", str(owner)), trace)
        return _wait_unlocked(lockfile, grace + 15)
    if pid and _in_cgroup(pid, paths):
        if procs.is_init(pid) and not procs.catches(pid, signal.SIGTERM):
            trace.note(f"stop: PID 1 ({pid}) has no SIGTERM handler, and the kernel drops it to a namespace's init")
        else:
            trace.note(f"stop: SIGTERM to PID 1 ({pid}), SIGKILL after {grace:g} s")
            with _quiet_missing():
                run(("kill", "-TERM", str(pid)), trace)
            end = time.monotonic() + grace
            while time.monotonic() < end and os.path.exists(f"/proc/{pid}") and not _zombie(pid):
                time.sleep(0.02)
    if lock.is_held(lockfile) and any(os.path.isdir(d) for d in cgroups.cgroup_dirs(facts, name)):
        trace.note("stop: SIGKILL every process in the container's cgroups")
        run(cgroups.kill_undo(facts, name), trace)
    return _wait_unlocked(lockfile, 10)


class _quiet_missing:
    """A PID 1 that exited meanwhile: nothing to signal."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, e: object, tb: object) -> bool:
        from .errors import StepFailed

        return isinstance(e, StepFailed)


def _zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat") or ""
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _wait_unlocked(lockfile: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while lock.is_held(lockfile):
        if time.monotonic() > end:
            raise CtrshError(f"still running after {timeout:g} s (its lock {lockfile} is held)")
        time.sleep(0.01)
    return True


def logs_argv(paths: Paths, follow: bool) -> Argv:
    log = f"{paths.state}/{LOG}"
    if not os.path.exists(log):
        raise CtrshError(f"{paths.name!r} has no log: only detached containers (apply -d) keep one")
    holder = lock.holder(lock.lock_path(paths.facts.state_dir, paths.name))
    if follow and holder and lock.is_held(lock.lock_path(paths.facts.state_dir, paths.name)):
        return ("tail", "-n", "+1", "-f", f"--pid={holder}", log)  # ends when the container does
    return ("cat", log)


# --- exec -------------------------------------------------------------------------------------

# In a private mount namespace of the host's (nothing it mounts is seen anywhere else): fresh copies
# of the trusted tools on a tmpfs over $1, opened as fd 3 and unmounted; then exec the rest (nsenter
# into the container, then the tools run from fd 3). $1 the mount point, then the tools, --, command.
EXEC_TOOLS = """d=$1
shift
mount -t tmpfs -o mode=0755,size=16m,nosuid,nodev ctrsh-exec-tools "$d"
while [ "$1" != -- ]; do cp "$1" "$d/"; shift; done
shift
exec 3<"$d"
umount -l "$d"
exec "$@\""""


def _status_of(pid: int) -> dict[str, str]:
    out = {}
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def limits_of(pid: int) -> tuple[list[str], int, int, bool]:
    """PID 1's privileges as they are now (it can only have lowered them): bounding set, uid, gid,
    no_new_privs. The exec'd command gets no more."""
    from .recipe import ALL_CAPS

    st = _status_of(pid)
    if "CapBnd" not in st:
        raise CtrshError(f"cannot read /proc/{pid}/status: the container's PID 1 is gone")
    bnd = int(st["CapBnd"], 16)
    caps = [c for i, c in enumerate(ALL_CAPS) if bnd & (1 << i)]
    uid = inside_id(pid, "uid", int(st["Uid"].split()[0]))
    gid = inside_id(pid, "gid", int(st["Gid"].split()[0]))
    return caps, uid, gid, st.get("NoNewPrivs", "0") == "1"


# /proc/PID/limits' names -> prlimit's options (util-linux), which take the kernel's units as that file shows them.
PROC_LIMITS = {
    "Max cpu time": "cpu", "Max file size": "fsize", "Max data size": "data", "Max stack size": "stack",
    "Max core file size": "core", "Max resident set": "rss", "Max processes": "nproc", "Max open files": "nofile",
    "Max locked memory": "memlock", "Max address space": "as", "Max file locks": "locks",
    "Max pending signals": "sigpending", "Max msgqueue size": "msgqueue", "Max nice priority": "nice",
    "Max realtime priority": "rtprio", "Max realtime timeout": "rttime",
}  # fmt: skip


def rlimits_of(pid: int) -> list[str]:
    """PID 1's resource limits as they are now (security.rlimits, nofile 1024:1024 by default), as
    prlimit options: the exec'd command gets the container's limits, not those ctrsh runs with."""
    import re

    out = []
    for line in (_read(f"/proc/{pid}/limits") or "").splitlines()[1:]:
        name, soft, hard = ([*re.split(r"\s{2,}", line.strip()), "", ""])[:3]
        option = PROC_LIMITS.get(name)
        if option and all(re.fullmatch(r"unlimited|[0-9]+", v) for v in (soft, hard)):
            out.append(f"--{option}={soft}:{hard}")
    if not any(o.startswith("--nofile=") for o in out):
        raise CtrshError(f"cannot read /proc/{pid}/limits: the container's PID 1 is gone")
    return out


def inside_id(pid: int, kind: str, host_id: int) -> int:
    """A host uid/gid as PID's user namespace sees it (/proc/PID/uid_map, read from the host: lines
    INSIDE OUTSIDE COUNT); the same id without a user namespace (0 0 4294967295)."""
    for line in (_read(f"/proc/{pid}/{kind}_map") or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            first, outside, count = (int(p) for p in parts)
            if outside <= host_id < outside + count:
                return first + host_id - outside
    raise CtrshError(f"the container's PID 1 runs as host {kind} {host_id}, which its user namespace has no id for")


def env_of(pid: int) -> list[str]:
    """PID 1's environment (as the recipe set it), VAR=VALUE entries only."""
    import re

    raw = _read_bytes(f"/proc/{pid}/environ")
    out = []
    for item in raw.split(b"\0"):
        text = item.decode(errors="replace")
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", text, re.S):
            out.append(text)
    return out or [f"PATH={SAFE_PATH}"]


# The mount namespace file, opened on MNT_FD before exec's own `unshare --mount`: the kernel leaves
# mount namespace files out of a namespace's copy (a loop could keep namespaces alive forever), so
# in the copy the path is the empty file beneath.
MNT_FD = 4
OPEN_MNT = f'exec {MNT_FD}<"$1"; shift; exec "$@"'


# PID 1's working directory, entered once privileges are dropped (a path the container may have
# chosen, so never opened before); / if it is gone.
IN_CWD = 'cd -- "$1" 2>/dev/null || cd /\nshift\n'


def cwd_of(pid: int) -> str:
    """PID 1's working directory, as a path in its mount namespace (the kernel shows it so, the
    host root being out of reach from there)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "/"


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def _is_namespace(path: str) -> bool:
    """A namespace is bound to this file (not just the empty file made for it)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/mnt").st_dev  # nsfs
    except OSError:
        return False


def enter_flags(paths: Paths, pid: int) -> list[str]:
    """nsenter's flags for the namespaces ctrsh made for this container: the files it keeps them
    at, never /proc/PID/ns/* or PID 1's root (nsenter --target --all --root). PID 1 can move
    itself into namespaces of its own (a nested user + mount namespace needs no capability) and
    mount what it likes over /proc there: following it would run exec's trusted tools by a path
    the container made, before privileges are dropped. Only the PID namespace is taken from PID 1:
    a process cannot leave its own. Entering the mount namespace sets the root to its root, which
    pivot_root made the container's."""
    if not _is_namespace(paths.nsfile("mnt")):
        raise CtrshError(f"{paths.name}: its mount namespace is not at {paths.nsfile('mnt')}")
    from .phases import NSFILE

    flags = [f"--{kind}={paths.nsfile(f)}" for kind, f in NSFILE.items() if _is_namespace(paths.nsfile(f))]
    flags[0] = f"--mount=/proc/self/fd/{MNT_FD}"  # opened before `unshare --mount`: see OPEN_MNT
    net = _netns_of(paths, pid)
    if net is not None:
        flags.append(f"--net={net}")
    return [*flags, f"--pid=/proc/{pid}/ns/pid"]


def _netns_of(paths: Paths, pid: int) -> str | None:
    """The network namespace file to enter: its own, or (network: container) the ctrsh netns PID 1
    is in; None when it shares the host's (ctrsh's own: /proc/1 may be out of reach). Matched by
    identity, and then entered by the file."""
    own = f"/run/netns/{paths.netns}"
    if os.path.exists(own):
        return own
    current = f"/proc/{pid}/ns/net"
    if _same(current, "/proc/self/ns/net"):
        return None
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir("/run/netns")):
            if entry.startswith("ctrsh-") and _same(current, f"/run/netns/{entry}"):
                return f"/run/netns/{entry}"
    raise CtrshError(f"{paths.name}: PID 1 is in a network namespace ctrsh did not make; not following it")


def _check_user_ns(paths: Paths, pid: int) -> None:
    """PID 1 is still in the user namespace ctrsh made (or the host's): limits_of translated its ids
    with the map of the one it is in, and one of its own (no capability needed) could map a user to
    root. Checked after the read, which is enough: no process can go back to an ancestor user
    namespace."""
    held = paths.nsfile("user")
    expected = held if _is_namespace(held) else "/proc/self/ns/user"
    if not _same(f"/proc/{pid}/ns/user", expected):
        raise CtrshError(
            f"{paths.name}: PID 1 has moved into a user namespace of its own, whose map says nothing about "
            "who it is in the container's; exec does not follow it"
        )


def exec_argv(facts: Facts, name: str, pid: int, command: list[str], tty: bool) -> Argv:
    """Enter the container as its PID 1 is: its cgroups first (on the host), its resource limits,
    then every namespace, its root and working directory; then drop to PID 1's privileges with the trusted tools (fresh
    copies, run from a descriptor: no image binary runs with privileges), close every descriptor
    above 2, and exec the command with PID 1's environment."""
    from .phases import cgroups
    from .phases.process import CLOSE_AND_EXEC, FD3

    paths = Paths(facts, name)
    caps, uid, gid, nnp = limits_of(pid)
    _check_user_ns(paths, pid)  # after limits_of read PID 1's ids through its user namespace's map
    user = uid != 0 or gid != 0
    tools = [facts.busybox, facts.setpriv, *([facts.unshare] if user else []), facts.loader, *facts.setpriv_libs]
    run = [f"{FD3}/{os.path.basename(facts.loader)}", "--inhibit-cache", "--library-path", FD3]
    opts = ["--bounding-set=" + ",".join(["-all", *(f"+{c}" for c in caps)]), "--inh-caps=-all", "--ambient-caps=-all"]
    if nnp:
        opts.append("--no-new-privs")
    switch = [*run, f"{FD3}/unshare", f"--setgid={gid}", f"--setuid={uid}", "--"] if user else []
    inner = (
        # PID 1's rlimits, set once the tools are copied (a low fsize must not stop that), then inherited.
        "prlimit", *rlimits_of(pid), "--",
        *(() if tty else ("setsid",)),  # no controlling terminal: /dev/tty inside reaches nothing of the caller's
        "nsenter", *enter_flags(paths, pid), "--",
        *run, f"{FD3}/setpriv", *opts, "--", *switch,
        f"{FD3}/busybox", "sh", "-c", IN_CWD + CLOSE_AND_EXEC, "ctrsh-exec", cwd_of(pid), *env_of(pid), *command,
    )  # fmt: skip
    chain = (
        *cgroups.join_argv(facts, name),
        "sh", "-c", OPEN_MNT, "ctrsh-open-mnt", paths.nsfile("mnt"),
        # --cgroup: a cgroup namespace rooted at the container's cgroups (just joined), the view PID 1 has.
        "unshare", "--mount", *(("--cgroup",) if facts.cgroup_ns else ()), "--propagation", "private", "--",
        "sh", "-euc", EXEC_TOOLS, "ctrsh-exec-tools", paths.rootfs, *tools, "--", *inner,
    )  # fmt: skip
    if not tty:
        return chain
    return ("env", "-i", f"PATH={SAFE_PATH}", "SHELL=/bin/sh", "script", "--quiet", "--return", "--flush",
            "--command", "exec " + shlex.join(chain), "/dev/null")  # fmt: skip
