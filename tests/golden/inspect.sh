#!/usr/bin/env bash
# Container "inspect", exported by ctrsh 0.1.0 from recipes/inspect.yaml.
# It runs the same commands as `ctrsh apply recipes/inspect.yaml`, with plain bash.
# Run it as root. Everything it changes on the host is undone when it exits,
# fails or is interrupted: each step that changes the host registers its undo.
# shellcheck disable=SC2016  # '$1' in single quotes is for the inner sh, by design
# shellcheck disable=SC2174  # mkdir -p -m: the mode is meant for the last dir only
set -euo pipefail
# The tools this runs as root come from a fixed PATH (as sudo's secure_path), never the caller's.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

if [[ $EUID -ne 0 ]]; then
  echo "$0: run this as root, e.g. sudo bash $0" >&2
  exit 1
fi

# Descriptors the caller left open must not reach the container (runc CVE-2024-21626): close all
# but stdin, stdout, stderr and bash's own handle on this script (255).
for fd in /proc/"$$"/fd/*; do
  fd=${fd##*/}
  if ((fd > 2 && fd != 255)); then eval "exec $fd>&-"; fi
done
lock=/run/ctrsh.inspect.lock
mkdir -p -- "${lock%/*}"
for ((i = 0; ; i++)); do
  if [[ -L $lock ]]; then echo "$0: $lock is a symlink: not using it" >&2; exit 125; fi
  umask=$(umask)
  umask 077  # a new lock file is root's alone, as apply makes it
  exec 9<>"$lock"
  umask "$umask"
  if ! flock -w 0.1 9; then  # -w: over `ctrsh ps`, which holds it for an instant to look
    echo "$0: a container named inspect is running (pid $(<"$lock")); ctrsh stop inspect stops it" >&2
    exit 125
  fi
  if [[ /proc/$$/fd/9 -ef $lock ]]; then break; fi  # removed by its last holder meanwhile: lock the new one
  if ((i >= 100)); then echo "$0: cannot take $lock" >&2; exit 125; fi
done
echo $$ >"$lock"  # who holds it: `ctrsh stop` and `destroy --force` send this script SIGTERM
undos=()  # commands that reverse what has run, oldest first
stop=0    # set by a signal, acted on between steps: no step runs without its undo registered
cleanup() {
  local rc=$? i
  if ((stop)); then rc=$stop; fi
  trap - EXIT
  trap '' INT TERM HUP QUIT PIPE USR1 USR2 ALRM  # a teardown cut short would leave the host half-changed
  for ((i = ${#undos[@]} - 1; i >= 0; i--)); do
    eval "${undos[i]}" || echo "$0: undo failed: ${undos[i]}" >&2
  done
  rm -f -- "$lock"  # the container is gone: its lock file goes, while still held (as apply does)
  exit "$rc"
}
# After a step that changed the host: register what reverses it, then stop if asked to.
undo() {
  undos+=("$1")
  if ((stop)); then exit "$stop"; fi
}
trap cleanup EXIT

# The container runs in a session of its own, out of reach of the terminal's Ctrl-C, so signals to
# this script are passed on to it, as `ctrsh apply` does. Its processes are those in its mount
# namespace (-ef: same file). Ctrl-C goes to its PID 1 if that has a handler for it; a PID 1 without
# one would never see it (the kernel protects a namespace's init), so then the container is stopped.
container_ns=/run/ctrsh/inspect/ns/mnt
container=0  # pid of the command that runs the container, while it runs
terminal=0  # 1: it has a pty of its own (script(1) relays the caller's terminal to it)
container_pids() {
  local p
  for p in /proc/[0-9]*; do
    if [[ $p/ns/mnt -ef $container_ns && ${p#/proc/} != "$$" ]]; then echo "${p#/proc/}"; fi
  done
}
catches() {  # is $1 PID 1 of a PID namespace (else 2), with a handler for signal $2 (else 1)?
  local key value nspid=() caught=0
  while read -r key value; do
    case $key in
      NSpid:) read -ra nspid <<<"$value" ;;
      SigCgt: | SigBlk:) caught=$((caught | 16#$value >> ($2 - 1) & 1)) ;;  # blocked: an init like tini takes it
    esac
  done <"/proc/$1/status" || return 2
  ((${#nspid[@]} > 1)) && [[ ${nspid[-1]} == 1 ]] || return 2
  # tini (process.init) waits in sigtimedwait, which hides its blocked signals while it waits
  ((caught)) || [[ $(<"/proc/$1/comm") == tini-static ]]
}
on_signal() {  # $1 signal, $2 exit code
  local p init=""
  if ((container)) && [[ $1 == INT ]] && ((!stop)); then
    for p in $(container_pids); do
      if catches "$p" 2; then init=$p; elif (($? == 1)); then init=none; fi
    done
    if [[ -n $init && $init != none ]]; then kill -INT "$init" 2>/dev/null || :; return; fi
  fi
  if ((!stop)); then stop=$2; fi
  if ((container)); then stop_container; fi
}
# As `docker stop`: SIGTERM to PID 1, SIGKILL to all after the grace time. A PID 1 of a PID namespace
# with no SIGTERM handler never gets it (the kernel drops it), so then SIGKILL at once.
grace=10
deadline=0
stop_container() {
  local p inits=() others=() targets=() hard=0
  if ((deadline == 0)); then
    for p in $(container_pids); do
      catches "$p" 15
      case $? in 0) inits+=("$p") ;; 1) hard=1 ;; *) others+=("$p") ;; esac
    done
    targets=("${inits[@]}")
    if ((!${#inits[@]})); then targets=("${others[@]}"); fi
    if ((!hard && ${#targets[@]})); then
      kill -TERM "${targets[@]}" 2>/dev/null || :
      deadline=$((SECONDS + grace))
      return
    fi
    deadline=-1
  fi
  if ((deadline > 0 && SECONDS < deadline)); then return; fi
  for p in $(container_pids); do
    [[ $(<"/proc/$p/comm") == script ]] || kill -KILL "$p" 2>/dev/null || :  # the relay ends with PID 1
  done
}
# Run the container in the background and wait, so that a signal's trap runs at once.
# (errexit is off meanwhile: bash 5.2 exits when a trap interrupts `wait` under set -e, even in an `if`.)
run_container() {
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
}
# As apply: once the container has exited, and before teardown removes its cgroup, say whether the
# kernel's OOM killer struck there, from the cgroup's oom_kill counter, and exit 137 if it killed PID 1
# (util-linux 2.38's `unshare --fork` exits 1 when its child dies of SIGKILL). $1: the exit code;
# prints the one to use.
oom_counter=/sys/fs/cgroup/memory/ctrsh/inspect/memory.oom_control
oom_check() {
  local key value n=0 f limit="" at="" what
  if [[ -z $oom_counter || ! -r $oom_counter ]]; then echo "$1"; return; fi
  while read -r key value; do if [[ $key == oom_kill ]]; then n=$value; fi; done <"$oom_counter"
  if ((n == 0)); then echo "$1"; return; fi
  for f in memory.limit_in_bytes memory.max; do
    if [[ -r ${oom_counter%/*}/$f ]]; then read -r limit <"${oom_counter%/*}/$f"; break; fi
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
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP
trap 'on_signal PIPE 141' PIPE
# Every other signal that would end bash with no teardown, as apply does.
for sig in QUIT USR1 USR2 ALRM XCPU XFSZ VTALRM PROF IO PWR; do
  # shellcheck disable=SC2064  # the signal's name and number are fixed here, on purpose
  trap "on_signal $sig $((128 + $(kill -l "$sig")))" "$sig"
done
# Note: seccomp: not applied. Docker filters ~50 system calls with seccomp; no stock command-line tool loads a seccomp filter, so ctrsh relies on dropped capabilities, no_new_privs and read-only/masked kernel paths.
# Note: keyrings: root inside shares host root's user keyring (keyrings are per uid; Docker's seccomp profile blocks keyctl and add_key, and only that or a user namespace would separate them).

# == rootfs: provide the root filesystem ==
# Where built images are kept; 0700 (set even if it exists): an image may hold setuid files and device nodes, which no other host user may reach (Docker's CVE-2021-41091).
install -d -m 0700 /var/lib/ctrsh/images
# Record that this container uses the image, before looking whether it exists, under the image's lock (shared): `ctrsh rmi` (exclusive) then either sees it and refuses, or has removed the image already and it is built again. Removed when the container is torn down.
flock --shared /var/lib/ctrsh/images/busybox.lock sh -c 'umask 077; printf "%s\n" "$2" "$3" "$4" >"$1"' ctrsh-use /var/lib/ctrsh/images/busybox.use-09766c25-inspect /var/lib/ctrsh/images/busybox /run/ctrsh inspect
undo 'rm -f /var/lib/ctrsh/images/busybox.use-09766c25-inspect'
if [[ ! -e /var/lib/ctrsh/images/busybox && ! -L /var/lib/ctrsh/images/busybox ]]; then  # only if missing
  n=${#undos[@]}
  # Where built images are kept; 0700 (set even if it exists): an image may hold setuid files and device nodes, which no other host user may reach (Docker's CVE-2021-41091).
  install -d -m 0700 /var/lib/ctrsh/images
  # Clear what an earlier, interrupted build by this container name may have left.
  rm -rf --one-file-system /var/lib/ctrsh/images/busybox.tmp-inspect
  # Build a busybox image in a work dir of this container's own, beside its final place; a build cut short is never used.
  mkdir -m 0755 /var/lib/ctrsh/images/busybox.tmp-inspect /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs
  undo 'rm -rf --one-file-system /var/lib/ctrsh/images/busybox.tmp-inspect'
  # The usual top-level dirs, mode 0755 whatever the umask ctrsh runs with.
  mkdir -m 0755 /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/bin /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/sbin /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/usr /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/usr/bin /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/usr/sbin /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/dev /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/proc /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/sys /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/etc /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/root /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/tmp
  # /tmp is writable by all, with the sticky bit, as on any Linux.
  chmod 1777 /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/tmp
  # A static busybox needs no libraries: this one file is every command in the image.
  install -m 0755 /bin/busybox /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs/bin/busybox
  # One relative symlink per applet (usr/bin/env -> ../../bin/busybox), valid wherever the tree is mounted.
  sh -c 'cd "$1"
for p in $(bin/busybox --list-full); do
  case $p in */*/*) t=../../bin/busybox ;; *) t=../bin/busybox ;; esac
  [ -e "$p" ] || ln -s "$t" "$p"
done' ctrsh-link /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs
  # Minimal /etc/passwd and /etc/group, so tools show names.
  sh -c 'umask 022
printf "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n" >"$1/etc/passwd"
printf "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n" >"$1/etc/group"
' ctrsh-etc /var/lib/ctrsh/images/busybox.tmp-inspect/rootfs
  # Publish the finished build in one rename, under its lock: if another apply published it first, keep theirs and drop this copy. Later applies reuse it.
  flock /var/lib/ctrsh/images/busybox.lock sh -c 'if [ ! -e "$2" ]; then
  printf "%s\n" "$3" >"$2.source"
  mv -T "$1/rootfs" "$2"
fi
rm -rf --one-file-system "$1"
' ctrsh-publish /var/lib/ctrsh/images/busybox.tmp-inspect /var/lib/ctrsh/images/busybox busybox
  undos=("${undos[@]:0:n}")  # made and kept: its clean-up undos lapse
fi
if [[ ! -e /var/lib/ctrsh/dev-2 && ! -L /var/lib/ctrsh/dev-2 ]]; then  # only if missing
  n=${#undos[@]}
  # Where built images are kept; 0700 (set even if it exists): an image may hold setuid files and device nodes, which no other host user may reach (Docker's CVE-2021-41091).
  install -d -m 0700 /var/lib/ctrsh
  # Clear what an earlier, interrupted build by this container name may have left.
  rm -rf --one-file-system /var/lib/ctrsh/dev-2.tmp-inspect
  # Build a template for /dev in a work dir of this container's own, beside its final place; a build cut short is never used.
  mkdir -m 0755 /var/lib/ctrsh/dev-2.tmp-inspect /var/lib/ctrsh/dev-2.tmp-inspect/rootfs
  undo 'rm -rf --one-file-system /var/lib/ctrsh/dev-2.tmp-inspect'
  # Mount points for ptys, shared memory and message queues; the template's own mode 0755 becomes /dev's.
  mkdir -m 0755 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/pts /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/shm /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/mqueue
  # /dev/null: character device 1:3, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/null c 1 3
  # /dev/zero: character device 1:5, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/zero c 1 5
  # /dev/full: character device 1:7, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/full c 1 7
  # /dev/random: character device 1:8, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/random c 1 8
  # /dev/urandom: character device 1:9, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/urandom c 1 9
  # /dev/tty: character device 5:0, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/tty c 5 0
  # /dev/fd -> /proc/self/fd, as on any Linux.
  ln -s /proc/self/fd /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/fd
  # /dev/stdin -> /proc/self/fd/0, as on any Linux.
  ln -s /proc/self/fd/0 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/stdin
  # /dev/stdout -> /proc/self/fd/1, as on any Linux.
  ln -s /proc/self/fd/1 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/stdout
  # /dev/stderr -> /proc/self/fd/2, as on any Linux.
  ln -s /proc/self/fd/2 /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/stderr
  # /dev/ptmx -> pts/ptmx, as on any Linux.
  ln -s pts/ptmx /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/ptmx
  # /dev/core -> /proc/kcore, as on any Linux.
  ln -s /proc/kcore /var/lib/ctrsh/dev-2.tmp-inspect/rootfs/core
  # Publish the finished build in one rename, under its lock: if another apply published it first, keep theirs and drop this copy. Later applies reuse it.
  flock /var/lib/ctrsh/dev-2.lock sh -c 'if [ ! -e "$2" ]; then
  printf "%s\n" "$3" >"$2.source"
  mv -T "$1/rootfs" "$2"
fi
rm -rf --one-file-system "$1"
' ctrsh-publish /var/lib/ctrsh/dev-2.tmp-inspect /var/lib/ctrsh/dev-2 'dev template'
  undos=("${undos[@]:0:n}")  # made and kept: its clean-up undos lapse
fi
# Remove this apply's build work dirs, left behind if another apply published the same image first.
rm -rf --one-file-system /var/lib/ctrsh/images/busybox.tmp-inspect /var/lib/ctrsh/dev-2.tmp-inspect

# == namespaces: create the namespaces, persisted as files so each later step can enter them ==
if [[ ! -e /run/ctrsh && ! -L /run/ctrsh ]]; then  # only if missing
  # ctrsh's runtime state lives here, private to root (0700); made only if missing, and then removed once no container uses it.
  mkdir -p -m 0700 /run/ctrsh
  undo 'rmdir --ignore-fail-on-non-empty /run/ctrsh'
fi
# This container's state, private to root: its namespace files and its root mount point. mkdir fails if it exists, so two containers never share a name.
mkdir -m 0700 /run/ctrsh/inspect /run/ctrsh/inspect/ns /run/ctrsh/inspect/rootfs
undo 'rm -rf --one-file-system /run/ctrsh/inspect'
# Mark the dir as this ctrsh's (.ctrsh-owner): `ctrsh destroy` removes only marked dirs, never a look-alike.
sh -Cc 'printf "%s\n" "$2" >"$1"' ctrsh-mark /run/ctrsh/inspect/.ctrsh-owner 'ctrsh container inspect state-dir /run/ctrsh data-dir /var/lib/ctrsh'
# A private mount point to hold namespace files: the kernel refuses them under a shared mount.
mount --bind --make-private /run/ctrsh/inspect/ns /run/ctrsh/inspect/ns
undo 'umount --recursive /run/ctrsh/inspect/ns'
# Empty files that namespaces will be bound to, keeping them alive.
touch /run/ctrsh/inspect/ns/mnt /run/ctrsh/inspect/ns/uts /run/ctrsh/inspect/ns/ipc
# A network namespace, kept alive at /run/netns/ctrsh-inspect: only lo, and it is down.
ip netns add ctrsh-inspect
undo 'ip netns delete ctrsh-inspect'
# Create the namespaces, bind each to its file, then set the hostname inside them (the host's is untouched). Private propagation: no mount made inside ever reaches the host.
unshare --mount=/run/ctrsh/inspect/ns/mnt --uts=/run/ctrsh/inspect/ns/uts --ipc=/run/ctrsh/inspect/ns/ipc --propagation private hostname inspect

# == filesystem: assemble the container's mounts inside its own mount namespace ==
if [[ ! -e /var/lib/ctrsh/containers && ! -L /var/lib/ctrsh/containers ]]; then  # only if missing
  # Where containers' writable layers live while they run (made once, kept); 0700: no other user can reach a file a container writes (a setuid binary, say).
  mkdir -p -m 0700 /var/lib/ctrsh/containers
fi
# This container's dir, private to root, and overlayfs' scratch dir (work), on disk.
mkdir -m 0700 /var/lib/ctrsh/containers/inspect /var/lib/ctrsh/containers/inspect/work
undo 'rm -rf --one-file-system /var/lib/ctrsh/containers/inspect'
# Mark the dir as this ctrsh's (.ctrsh-owner): `ctrsh destroy` removes only marked dirs, never a look-alike.
sh -Cc 'printf "%s\n" "$2" >"$1"' ctrsh-mark /var/lib/ctrsh/containers/inspect/.ctrsh-owner 'ctrsh container inspect state-dir /run/ctrsh data-dir /var/lib/ctrsh'
# Its writable layer (upper), 0755 whatever the umask as it becomes the mode of the container's /; in it, every place ctrsh mounts onto, made a real directory in the container's own (fresh, trusted) upper layer: a symlink the image ships at /proc, /dev, /etc... is hidden, so it cannot redirect a mount.
mkdir -m 0755 /var/lib/ctrsh/containers/inspect/upper /var/lib/ctrsh/containers/inspect/upper/proc /var/lib/ctrsh/containers/inspect/upper/dev /var/lib/ctrsh/containers/inspect/upper/sys /var/lib/ctrsh/containers/inspect/upper/.ctrsh /var/lib/ctrsh/containers/inspect/upper/.oldroot /var/lib/ctrsh/containers/inspect/upper/etc
# Likewise, as empty files (mode 0644): /etc/hostname, /etc/hosts, /etc/resolv.conf, mounted over; and an empty /etc/ld.so.preload: setpriv runs after pivot_root, and its loader must not load a library the image names there.
sh -c 'for f; do install -m 0644 /dev/null "$f" || exit; done' ctrsh-files /var/lib/ctrsh/containers/inspect/upper/etc/ld.so.preload /var/lib/ctrsh/containers/inspect/upper/etc/hostname /var/lib/ctrsh/containers/inspect/upper/etc/hosts /var/lib/ctrsh/containers/inspect/upper/etc/resolv.conf
# Root filesystem: the shared image read-only below, this container's own writes above (upper).
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount -t overlay overlay -o lowerdir=/var/lib/ctrsh/images/busybox,upperdir=/var/lib/ctrsh/containers/inspect/upper,workdir=/var/lib/ctrsh/containers/inspect/work /run/ctrsh/inspect/rootfs
# A fresh, empty /dev: the container gets only the devices put there next, never the host's disks.
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount -t tmpfs -o nosuid,strictatime,mode=0755,size=65536k tmpfs /run/ctrsh/inspect/rootfs/dev
# Fill /dev from the template: six devices, the fd links, the pts, shm and mqueue mount points.
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- cp -a /var/lib/ctrsh/dev-2/. /run/ctrsh/inspect/rootfs/dev/
# The container's own pty instance (newinstance): it cannot see the host's terminals.
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts /run/ctrsh/inspect/rootfs/dev/pts
# /dev/shm for POSIX shared memory, private to the container, 64 MiB as in Docker.
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm /run/ctrsh/inspect/rootfs/dev/shm
# /dev/mqueue for POSIX message queues, those of the container's IPC namespace.
nsenter --mount=/run/ctrsh/inspect/ns/mnt --ipc=/run/ctrsh/inspect/ns/ipc -- mount -t mqueue -o nosuid,nodev,noexec mqueue /run/ctrsh/inspect/rootfs/dev/mqueue
# /sys read-only, mounted from the container's network namespace so it lists only its interfaces.
nsenter --mount=/run/ctrsh/inspect/ns/mnt --net=/run/netns/ctrsh-inspect -- mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /run/ctrsh/inspect/rootfs/sys
# Record which image this container is made from: `ctrsh rmi` refuses to remove an image in use.
sh -c 'printf "%s\n" "$2" >"$1"' ctrsh-record /run/ctrsh/inspect/image /var/lib/ctrsh/images/busybox
# The container's own /etc/hostname, hosts, resolv.conf: written in its state dir (mode 0644).
sh -c 'umask 022
mkdir "$1"; d=$1; shift
while [ $# -gt 0 ]; do printf "%s" "$2" >"$d/$1"; shift 2; done' ctrsh-etc /run/ctrsh/inspect/etc hostname 'inspect
' hosts '127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
127.0.1.1	inspect
' resolv.conf 'nameserver 192.0.2.53
'
# /etc/hostname: this container's own, bound over the image's (which stays unchanged).
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount --bind /run/ctrsh/inspect/etc/hostname /run/ctrsh/inspect/rootfs/etc/hostname
# /etc/hosts: this container's own, bound over the image's (which stays unchanged).
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount --bind /run/ctrsh/inspect/etc/hosts /run/ctrsh/inspect/rootfs/etc/hosts
# /etc/resolv.conf: this container's own, bound over the image's (which stays unchanged).
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount --bind /run/ctrsh/inspect/etc/resolv.conf /run/ctrsh/inspect/rootfs/etc/resolv.conf

# == network: configure the network namespace ==
# Bring up loopback: a new network namespace starts with lo down.
ip -n ctrsh-inspect link set lo up

# == cgroups: limit resources ==
# The parent of this ctrsh instance's cgroups (named for its state dir); removed once no container uses it.
mkdir -p /sys/fs/cgroup/cpu/ctrsh /sys/fs/cgroup/cpuacct/ctrsh /sys/fs/cgroup/memory/ctrsh /sys/fs/cgroup/pids/ctrsh /sys/fs/cgroup/devices/ctrsh /sys/fs/cgroup/freezer/ctrsh
undo 'sh -c '"'"'for d; do if [ -d "$d" ] && [ -z "$(find "$d" -mindepth 1 -type d)" ]; then rmdir "$d" 2>/dev/null || :; fi; done'"'"' ctrsh-rmdir /sys/fs/cgroup/cpu/ctrsh /sys/fs/cgroup/cpuacct/ctrsh /sys/fs/cgroup/memory/ctrsh /sys/fs/cgroup/pids/ctrsh /sys/fs/cgroup/devices/ctrsh /sys/fs/cgroup/freezer/ctrsh'
# The container's cgroup (a cgroup in each hierarchy): all its processes, also ones that leave its namespaces. Teardown kills every process in it first, then removes it.
mkdir /sys/fs/cgroup/cpu/ctrsh/inspect /sys/fs/cgroup/cpuacct/ctrsh/inspect /sys/fs/cgroup/memory/ctrsh/inspect /sys/fs/cgroup/pids/ctrsh/inspect /sys/fs/cgroup/devices/ctrsh/inspect /sys/fs/cgroup/freezer/ctrsh/inspect
undo 'sh -c '"'"'f=$1; shift
listed() { for d; do if [ -d "$d" ]; then find "$d" -name cgroup.procs -exec cat {} +; fi; done; }
n=0
while [ -n "$(listed "$@")" ]; do
  if [ "$n" -ge 100 ]; then echo "ctrsh: still running after 10 s:" $(listed "$@") >&2; exit 1; fi
  for d; do if [ -e "$d/cgroup.kill" ]; then echo 1 > "$d/cgroup.kill"; fi; done
  if [ -d "$f" ]; then
    echo FROZEN > "$f/freezer.state"
    i=0; while [ "$(cat "$f/freezer.state")" = FREEZING ] && [ $((i += 1)) -lt 100 ]; do sleep 0.01; done
  fi
  kill -9 $(listed "$@") 2>/dev/null || true
  if [ -d "$f" ]; then echo THAWED > "$f/freezer.state"; fi
  n=$((n + 1)); sleep 0.1
done
for d; do if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} +; fi; done'"'"' ctrsh-kill /sys/fs/cgroup/freezer/ctrsh/inspect /sys/fs/cgroup/cpu/ctrsh/inspect /sys/fs/cgroup/cpuacct/ctrsh/inspect /sys/fs/cgroup/memory/ctrsh/inspect /sys/fs/cgroup/pids/ctrsh/inspect /sys/fs/cgroup/devices/ctrsh/inspect /sys/fs/cgroup/freezer/ctrsh/inspect'
# Devices: deny every node first, as Docker does; CAP_MKNOD alone then makes nodes it cannot open.
sh -c 'printf "%s\n" "$1" > "$2"' ctrsh-write a /sys/fs/cgroup/devices/ctrsh/inspect/devices.deny
# Devices: then allow, one rule a write: 'c *:* m' and 'b *:* m' (any node may be made, not opened), and 'rwm' for the standard nodes only: null, zero, full, random, urandom, tty, console, ptmx, ptys.
sh -c 'f=$1; shift; for rule; do printf "%s\n" "$rule" > "$f"; done' ctrsh-allow /sys/fs/cgroup/devices/ctrsh/inspect/devices.allow 'c *:* m' 'b *:* m' 'c 1:3 rwm' 'c 1:5 rwm' 'c 1:7 rwm' 'c 1:8 rwm' 'c 1:9 rwm' 'c 5:0 rwm' 'c 5:1 rwm' 'c 5:2 rwm' 'c 136:* rwm'

# == security: drop privileges ==
# A private tmpfs for trusted copies of host tools: after pivot_root the image's own binaries are all there is, and none may run before privileges are dropped.
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- mount -t tmpfs -o mode=0755,size=16m,nosuid,nodev ctrsh-tools /run/ctrsh/inspect/rootfs/.ctrsh
# Copy in the host's static busybox (umount, rmdir, env for PID 1) and setpriv with its libraries and loader (setpriv drops capabilities; busybox's own setpriv cannot drop the bounding set).
nsenter --mount=/run/ctrsh/inspect/ns/mnt -- cp /bin/busybox /usr/bin/setpriv /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libcap-ng.so.0 /lib/x86_64-linux-gnu/libc.so.6 /run/ctrsh/inspect/rootfs/.ctrsh/

# == process: start the container's PID 1 ==
if ((stop)); then exit "$stop"; fi
# Enter the namespaces and fork PID 1 of a new PID namespace in a session of its own. As the host's sh it mounts /proc, masks kernel paths, pivot_roots, detaches the old root with trusted tools, then setpriv drops capabilities and busybox closes leaked fds before the command runs.
run_container sh -c 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"' ctrsh-join /sys/fs/cgroup/cpu/ctrsh/inspect/cgroup.procs /sys/fs/cgroup/cpuacct/ctrsh/inspect/cgroup.procs /sys/fs/cgroup/memory/ctrsh/inspect/cgroup.procs /sys/fs/cgroup/pids/ctrsh/inspect/cgroup.procs /sys/fs/cgroup/devices/ctrsh/inspect/cgroup.procs /sys/fs/cgroup/freezer/ctrsh/inspect/cgroup.procs -- nsenter --mount=/run/ctrsh/inspect/ns/mnt --uts=/run/ctrsh/inspect/ns/uts --ipc=/run/ctrsh/inspect/ns/ipc --net=/run/netns/ctrsh-inspect -- unshare --pid --cgroup --fork --kill-child -- env -i --default-signal PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin setsid sh -euc 'set -f  # paths and PATH are split, never glob-expanded
root=$1 cwd=$2 search=$3 nvars=$4
shift 4
# A closed stdin, stdout or stderr becomes /dev/null, as in Docker.
for fd in 0 1 2; do if [ ! -e /proc/self/fd/$fd ]; then eval "exec $fd<>\"\$root/dev/null\""; fi; done
# No terminal: stdin is /dev/null unless it was a pipe or a file.
if [ -t 0 ]; then exec <"$root/dev/null"; fi
# Mounted from inside the new PID namespace, so it shows the container'"'"'s processes only.
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
# Kernel interfaces: masked ones show nothing (an empty read-only tmpfs, or /dev/null over a file); read-only ones cannot be written.
for p in /proc/acpi /proc/asound /proc/interrupts /proc/kcore /proc/keys /proc/latency_stats /proc/sched_debug /proc/scsi /proc/timer_list /proc/timer_stats /sys/devices/virtual/powercap /sys/firmware; do
  if [ -d "$root$p" ]; then mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k ctrsh-masked "$root$p"
  elif [ -e "$root$p" ]; then mount --bind "$root/dev/null" "$root$p"; fi
done
for p in /proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger; do
  if [ -e "$root$p" ]; then
    mount --bind "$root$p" "$root$p" && mount -o remount,bind,ro,nosuid,nodev,noexec "$root$p"
  fi
done
# Resource limits, inherited by everything the container starts.
ulimit -n 1024
# Swap roots; the old one is detached with the trusted umount, not the image'"'"'s.
cd "$root"
pivot_root . .oldroot
/.ctrsh/busybox umount -l /.oldroot
/.ctrsh/busybox rmdir /.oldroot 2>/dev/null || :
# The working directory, made if the image lacks it (as Docker does).
if ! cd "$cwd" 2>/dev/null; then /.ctrsh/busybox mkdir -p "$cwd"; cd "$cwd"; fi
eval "prog=\${$((nvars + 1))}"
case $prog in
*/*) ;;
*)
  found=
  IFS=:
  for dir in $search; do
    if [ -f "${dir:-.}/$prog" ] && [ -x "${dir:-.}/$prog" ]; then found=${dir:-.}/$prog; break; fi
  done
  unset IFS
  if [ -z "$found" ]; then echo "ctrsh: $prog: not found in the container'"'"'s PATH ($search)" >&2; exit 127; fi
  i=0
  for arg; do
    shift
    if [ "$i" -eq "$nvars" ]; then set -- "$@" "$found"; else set -- "$@" "$arg"; fi
    i=$((i + 1))
  done
  ;;
esac
# Keep the tools open as fd 3, unmount them, then drop privileges with setpriv run from that fd.
exec 3</.ctrsh
/proc/self/fd/3/busybox umount -l /.ctrsh
/proc/self/fd/3/busybox rmdir /.ctrsh 2>/dev/null || :
exec /proc/self/fd/3/ld-linux-x86-64.so.2 --inhibit-cache --library-path /proc/self/fd/3 /proc/self/fd/3/setpriv --bounding-set=-all,+chown,+dac_override,+fsetid,+fowner,+mknod,+net_raw,+setgid,+setuid,+setfcap,+setpcap,+net_bind_service,+sys_chroot,+kill,+audit_write --inh-caps=-all --ambient-caps=-all --no-new-privs -- /proc/self/fd/3/busybox sh -c '"'"'for fd in /proc/self/fd/*; do
  fd=${fd##*/}
  if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
done
exec -a env /proc/self/exe -i "$@"
'"'"' ctrsh-exec "$@"
' ctrsh-start /run/ctrsh/inspect/rootfs / /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin 3 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root HOSTNAME=inspect /bin/sh -c 'echo "== processes (PID 1 is this script)"; ps -o pid,args
echo "== hostname: $(hostname)"
echo "== mounts"; cat /proc/self/mounts
echo "== /dev"; ls -l /dev
echo "== network"; ip -o link
echo "== namespaces"; ls -l /proc/self/ns | sed '"'"'s/.* -> //'"'"'
'
if ((stop)); then exit "$stop"; fi

# The EXIT trap now tears everything down: the undos above, newest first.
