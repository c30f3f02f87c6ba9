"""Plan -> a standalone bash script that does what `ctrsh apply` does.

Undos are registered as each step succeeds and run, newest first, by an EXIT
trap: on success, on a failing step (set -e), and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
from itertools import groupby

from . import __version__
from .errors import CtrshError
from .plan import PHASES, Plan
from .safepath import SAFE_PATH

HEADER = """\
#!/usr/bin/env bash
# {title}, exported by ctrsh {version} from {source}.
# It runs the same commands as `ctrsh apply {source}`, with plain bash.
# Run it as root. Everything it changes on the host is undone when it exits,
# fails or is interrupted: each step that changes the host registers its undo.
# shellcheck disable=SC2016  # '$1' in single quotes is for the inner sh, by design
# shellcheck disable=SC2174  # mkdir -p -m: the mode is meant for the last dir only
set -euo pipefail
# The tools this runs as root come from a fixed PATH (as sudo's secure_path), never the caller's.
export PATH={safe_path}

if [[ $EUID -ne 0 ]]; then
  echo "$0: run this as root, e.g. sudo bash $0" >&2
  exit 1
fi

# Descriptors the caller left open must not reach the container (runc CVE-2024-21626): close all
# but stdin, stdout, stderr and bash's own handle on this script (255).
for fd in /proc/"$$"/fd/*; do
  fd=${{fd##*/}}
  if ((fd > 2 && fd != 255)); then eval "exec $fd>&-"; fi
done
@LOCK@undos=()  # commands that reverse what has run, oldest first
stop=0    # set by a signal, acted on between steps: no step runs without its undo registered
cleanup() {{
  local rc=$? i
  if ((stop)); then rc=$stop; fi
  trap - EXIT
  trap '' INT TERM HUP QUIT PIPE USR1 USR2 ALRM  # a teardown cut short would leave the host half-changed
  for ((i = ${{#undos[@]}} - 1; i >= 0; i--)); do
    eval "${{undos[i]}}" || echo "$0: undo failed: ${{undos[i]}}" >&2
  done
  rm -f -- "$lock"  # the container is gone: its lock file goes, while still held (as apply does)
  exit "$rc"
}}
# After a step that changed the host: register what reverses it, then stop if asked to.
undo() {{
  undos+=("$1")
  if ((stop)); then exit "$stop"; fi
}}
trap cleanup EXIT

# The container runs in a session of its own, out of reach of the terminal's Ctrl-C, so signals to
# this script are passed on to it, as `ctrsh apply` does. Its processes are those in its mount
# namespace (-ef: same file). Ctrl-C goes to its PID 1 if that has a handler for it; a PID 1 without
# one would never see it (the kernel protects a namespace's init), so then the container is stopped.
container_ns={nsfile}
container=0  # pid of the command that runs the container, while it runs
terminal={terminal}  # 1: it has a pty of its own (script(1) relays the caller's terminal to it)
container_pids() {{
  local p
  for p in /proc/[0-9]*; do
    if [[ $p/ns/mnt -ef $container_ns && ${{p#/proc/}} != "$$" ]]; then echo "${{p#/proc/}}"; fi
  done
}}
catches() {{  # is $1 PID 1 of a PID namespace (else 2), with a handler for signal $2 (else 1)?
  local key value nspid=() caught=0
  while read -r key value; do
    case $key in
      NSpid:) read -ra nspid <<<"$value" ;;
      SigCgt: | SigBlk:) caught=$((caught | 16#$value >> ($2 - 1) & 1)) ;;  # blocked: an init like tini takes it
    esac
  done <"/proc/$1/status" || return 2
  ((${{#nspid[@]}} > 1)) && [[ ${{nspid[-1]}} == 1 ]] || return 2
  # tini (process.init) waits in sigtimedwait, which hides its blocked signals while it waits
  ((caught)) || [[ $(<"/proc/$1/comm") == tini-static ]]
}}
on_signal() {{  # $1 signal, $2 exit code
  local p init=""
  if ((container)) && [[ $1 == INT ]] && ((!stop)); then
    for p in $(container_pids); do
      if catches "$p" 2; then init=$p; elif (($? == 1)); then init=none; fi
    done
    if [[ -n $init && $init != none ]]; then kill -INT "$init" 2>/dev/null || :; return; fi
  fi
  if ((!stop)); then stop=$2; fi
  if ((container)); then stop_container; fi
}}
# As `docker stop`: SIGTERM to PID 1, SIGKILL to all after the grace time. A PID 1 of a PID namespace
# with no SIGTERM handler never gets it (the kernel drops it), so then SIGKILL at once.
grace=10
deadline=0
stop_container() {{
  local p inits=() others=() targets=() hard=0
  if ((deadline == 0)); then
    for p in $(container_pids); do
      catches "$p" 15
      case $? in 0) inits+=("$p") ;; 1) hard=1 ;; *) others+=("$p") ;; esac
    done
    targets=("${{inits[@]}}")
    if ((!${{#inits[@]}})); then targets=("${{others[@]}}"); fi
    if ((!hard && ${{#targets[@]}})); then
      kill -TERM "${{targets[@]}}" 2>/dev/null || :
      deadline=$((SECONDS + grace))
      return
    fi
    deadline=-1
  fi
  if ((deadline > 0 && SECONDS < deadline)); then return; fi
  for p in $(container_pids); do
    [[ $(<"/proc/$p/comm") == script ]] || kill -KILL "$p" 2>/dev/null || :  # the relay ends with PID 1
  done
}}
# Run the container in the background and wait, so that a signal's trap runs at once.
# (errexit is off meanwhile: bash 5.2 exits when a trap interrupts `wait` under set -e, even in an `if`.)
run_container() {{
  local rc
  if ((!terminal)) && [[ -t 1 || -t 2 ]]; then
    # No terminal of its own: then it must not hold the caller's either (it could read what is
    # typed there): its output goes through pipes, copied to the terminal by cat.
    if [[ -t 0 ]]; then "$@" </dev/null > >(cat) 2> >(cat >&2) 9>&- & else "$@" > >(cat) 2> >(cat >&2) 9>&- & fi
  else
    "$@" <&0 9>&- &
  fi
  container=$!
  set +e
  while :; do
    wait "$container"
    rc=$?
    if ! kill -0 "$container" 2>/dev/null; then break; fi
    if ((stop)); then stop_container; sleep 0.05; fi  # it may still be entering its namespaces
  done
  set -e
  container=0
  if ((!stop)); then rc=$(oom_check "$rc"); fi
  return "$rc"
}}
# As apply: once the container has exited, and before teardown removes its cgroup, say whether the
# kernel's OOM killer struck there, from the cgroup's oom_kill counter, and exit 137 if it killed PID 1
# (util-linux 2.38's `unshare --fork` exits 1 when its child dies of SIGKILL). $1: the exit code;
# prints the one to use.
oom_counter={oom_counter}
oom_check() {{
  local key value n=0 f limit="" at="" what
  if [[ -z $oom_counter || ! -r $oom_counter ]]; then echo "$1"; return; fi
  while read -r key value; do if [[ $key == oom_kill ]]; then n=$value; fi; done <"$oom_counter"
  if ((n == 0)); then echo "$1"; return; fi
  for f in memory.limit_in_bytes memory.max; do
    if [[ -r ${{oom_counter%/*}}/$f ]]; then read -r limit <"${{oom_counter%/*}}/$f"; break; fi
  done
  if [[ $limit =~ ^[0-9]+$ ]] && ((limit < 1 << 62)); then  # not unlimited (v1: near 2^63, v2: max)
    if ((limit % (1 << 30) == 0)); then at=$((limit >> 30))G
    elif ((limit % (1 << 20) == 0)); then at=$((limit >> 20))M
    elif ((limit % 1024 == 0)); then at=$((limit >> 10))k
    else at=$limit; fi
    at=" at its memory limit (memory: $at)"
  fi
  what="$n process"
  if ((n > 1)); then what="$n processes"; fi
  if (($1 == 137 || $1 == 1)); then
    echo "$0: the container was OOM-killed: the kernel's OOM killer killed $what$at" >&2
    echo 137
  else
    echo "$0: the kernel's OOM killer killed $what in the container$at; its PID 1 exited $1" >&2
    echo "$1"
  fi
}}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP
trap 'on_signal PIPE 141' PIPE
# Every other signal that would end bash with no teardown, as apply does.
for sig in QUIT USR1 USR2 ALRM XCPU XFSZ VTALRM PROF IO PWR; do
  # shellcheck disable=SC2064  # the signal's name and number are fixed here, on purpose
  trap "on_signal $sig $((128 + $(kill -l "$sig")))" "$sig"
done
"""


# One name, one container: the lock `ctrsh apply` takes (lock.py), taken the same way with util-linux
# flock(1), so an apply and this script of one name never run together. Held on fd 9 until the
# script exits; the container does not get it. $lock's dir is the state dir's parent.
LOCK = """\
lock={lock}
mkdir -p -- "${{lock%/*}}"
for ((i = 0; ; i++)); do
  if [[ -L $lock ]]; then echo "$0: $lock is a symlink: not using it" >&2; exit 125; fi
  umask=$(umask)
  umask 077  # a new lock file is root's alone, as apply makes it
  exec 9<>"$lock"
  umask "$umask"
  if ! flock -w 0.1 9; then  # -w: over `ctrsh ps`, which holds it for an instant to look
    echo "$0: a container named {name} is running (pid $(<"$lock")); ctrsh stop {name} stops it" >&2
    exit 125
  fi
  if [[ /proc/$$/fd/9 -ef $lock ]]; then break; fi  # removed by its last holder meanwhile: lock the new one
  if ((i >= 100)); then echo "$0: cannot take $lock" >&2; exit 125; fi
done
echo $$ >"$lock"  # who holds it: `ctrsh stop` and `destroy --force` send this script SIGTERM
"""


def export_header(plan: Plan, title: str | None = None) -> str:
    """The script's start: checks, the name's lock, the undo list, the EXIT trap and the signal
    handling, for the container `plan` runs in the foreground."""
    lock = LOCK.format(lock=shlex.quote(plan.lock), name=plan.name) if plan.lock else 'lock=""\n'
    return HEADER.format(
        title=title or f'Container "{plan.name}"',
        version=__version__,
        source=plan.source,
        nsfile=shlex.quote(plan.container_ns),
        terminal=int(plan.terminal),
        safe_path=SAFE_PATH,
        oom_counter=shlex.quote(plan.oom_counter) if plan.oom_counter else '""',
    ).replace("@LOCK@", lock)


def export_steps(plan: Plan, start: str | None = None) -> list[str]:
    """The plan's notes and steps, each registering its undo. start: what runs the container's start
    step (default `run_container `, in the foreground; a group's detached members: start_detached)."""
    out = [f"# Note: {note}\n" for note in plan.notes]
    for phase, steps in plan.by_phase():
        out.append(f"\n# == {phase}: {PHASES[phase]} ==\n")
        for (creates, keep), grouped in groupby(steps, key=lambda s: (s.creates, s.keep)):
            group = list(grouped)
            indent = "  " if creates else ""
            if creates:
                path = shlex.quote(creates)
                out.append(f"if [[ ! -e {path} && ! -L {path} ]]; then  # only if missing\n")
                if keep:
                    out.append("  n=${#undos[@]}\n")
            for step in group:
                if step.foreground:
                    out.append(f'{indent}if ((stop)); then exit "$stop"; fi\n')
                run = (start if start is not None else "run_container ") if step.foreground else ""
                out.append(f"{indent}# {step.why}\n{indent}{run}{step.command}\n")
                if step.undo_command:
                    out.append(f"{indent}undo {shlex.quote(step.undo_command)}\n")
            if keep:
                out.append('  undos=("${undos[@]:0:n}")  # made and kept: its clean-up undos lapse\n')
            if creates:
                out.append("fi\n")
    return out


def export_script(plan: Plan) -> str:
    out = [export_header(plan), *export_steps(plan)]
    out.append('if ((stop)); then exit "$stop"; fi\n')
    out.append("\n# The EXIT trap now tears everything down: the undos above, newest first.\n")
    return "".join(out)


def write_script(path: str, text: str) -> None:
    """Write the script to `path` without ever writing or chmodding through a symlink.

    `-o` may name a file in a shared directory (/tmp), where another user can
    plant a symlink at that name: the script is written to a new temp file
    (O_CREAT|O_EXCL, made by mkstemp) beside it, made executable through its own
    descriptor, and renamed over `path`; rename replaces a link, never its target.
    An existing `path` that is not a regular file (a symlink, a device, a dir)
    is refused.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CtrshError(f"cannot write {path}: {e.strerror}") from None
    else:
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise CtrshError(f"refusing to write {path}: it exists and is {kind}; remove it or choose another name")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ctrsh-export-")
    except OSError as e:
        raise CtrshError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o755)
        os.rename(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise CtrshError(f"cannot write {path}: {e.strerror}") from None
