#!/usr/bin/env bash
# Container "web", exported by ctrsh 0.1.0 from recipes/web.yaml.
# It runs the same commands as `ctrsh apply recipes/web.yaml`, with plain bash.
# Run it as root. Everything it changes on the host is undone when it exits,
# fails or is interrupted: each step that changes the host registers its undo.
# shellcheck disable=SC2016  # '$1' in single quotes is for the inner sh, by design
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
  echo "$0: run this as root, e.g. sudo bash $0" >&2
  exit 1
fi

undos=()  # commands that reverse what has run, oldest first
stop=0    # set by a signal, acted on between steps: no step runs without its undo registered
cleanup() {
  local rc=$? i
  if ((stop)); then rc=$stop; fi
  trap - EXIT
  trap '' INT TERM HUP  # a teardown cut short would leave the host half-changed
  for ((i = ${#undos[@]} - 1; i >= 0; i--)); do
    eval "${undos[i]}" || echo "$0: undo failed: ${undos[i]}" >&2
  done
  exit "$rc"
}
# After a step that changed the host: register what reverses it, then stop if asked to.
undo() {
  undos+=("$1")
  if ((stop)); then exit "$stop"; fi
}
trap cleanup EXIT
trap 'stop=130' INT
trap 'stop=143' TERM
trap 'stop=129' HUP

# == rootfs: provide the root filesystem ==
if [[ ! -e /var/lib/ctrsh/images/busybox && ! -L /var/lib/ctrsh/images/busybox ]]; then  # only if missing
  n=${#undos[@]}
  # Clear what an earlier, interrupted build may have left.
  rm -rf --one-file-system /var/lib/ctrsh/images/busybox.tmp
  # Lay out a new busybox image beside its final place, renamed into place when complete.
  mkdir -p /var/lib/ctrsh/images/busybox.tmp/bin /var/lib/ctrsh/images/busybox.tmp/sbin /var/lib/ctrsh/images/busybox.tmp/usr/bin /var/lib/ctrsh/images/busybox.tmp/usr/sbin /var/lib/ctrsh/images/busybox.tmp/dev /var/lib/ctrsh/images/busybox.tmp/proc /var/lib/ctrsh/images/busybox.tmp/sys /var/lib/ctrsh/images/busybox.tmp/etc /var/lib/ctrsh/images/busybox.tmp/root /var/lib/ctrsh/images/busybox.tmp/tmp
  undo 'rm -rf --one-file-system /var/lib/ctrsh/images/busybox.tmp'
  # /tmp is writable by all, with the sticky bit, as on any Linux.
  chmod 1777 /var/lib/ctrsh/images/busybox.tmp/tmp
  # A static busybox needs no libraries: this one file is every command in the image.
  cp /bin/busybox /var/lib/ctrsh/images/busybox.tmp/bin/busybox
  # One relative symlink per applet (usr/bin/env -> ../../bin/busybox), valid wherever the tree is mounted.
  sh -c 'cd "$1"
for p in $(bin/busybox --list-full); do
  case $p in */*/*) t=../../bin/busybox ;; *) t=../bin/busybox ;; esac
  [ -e "$p" ] || ln -s "$t" "$p"
done' ctrsh-link /var/lib/ctrsh/images/busybox.tmp
  # Minimal /etc/passwd and /etc/group, so tools show names.
  sh -c 'printf "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n" >"$1/etc/passwd"
printf "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n" >"$1/etc/group"
' ctrsh-etc /var/lib/ctrsh/images/busybox.tmp
  # Publish the finished image in one rename; later applies reuse it.
  mv -T /var/lib/ctrsh/images/busybox.tmp /var/lib/ctrsh/images/busybox
  undos=("${undos[@]:0:n}")  # made and kept: its clean-up undos lapse
fi
if [[ ! -e /var/lib/ctrsh/dev && ! -L /var/lib/ctrsh/dev ]]; then  # only if missing
  n=${#undos[@]}
  # Clear what an earlier, interrupted build may have left.
  rm -rf --one-file-system /var/lib/ctrsh/dev.tmp
  # A template for /dev, with mount points for ptys and shared memory (skipped once it exists).
  mkdir -p /var/lib/ctrsh/dev.tmp/pts /var/lib/ctrsh/dev.tmp/shm
  undo 'rm -rf --one-file-system /var/lib/ctrsh/dev.tmp'
  # /dev/null: character device 1:3, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev.tmp/null c 1 3
  # /dev/zero: character device 1:5, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev.tmp/zero c 1 5
  # /dev/full: character device 1:7, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev.tmp/full c 1 7
  # /dev/random: character device 1:8, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev.tmp/random c 1 8
  # /dev/urandom: character device 1:9, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev.tmp/urandom c 1 9
  # /dev/tty: character device 5:0, one of the six devices every container gets.
  mknod -m 666 /var/lib/ctrsh/dev.tmp/tty c 5 0
  # /dev/fd -> /proc/self/fd, as on any Linux.
  ln -s /proc/self/fd /var/lib/ctrsh/dev.tmp/fd
  # /dev/stdin -> /proc/self/fd/0, as on any Linux.
  ln -s /proc/self/fd/0 /var/lib/ctrsh/dev.tmp/stdin
  # /dev/stdout -> /proc/self/fd/1, as on any Linux.
  ln -s /proc/self/fd/1 /var/lib/ctrsh/dev.tmp/stdout
  # /dev/stderr -> /proc/self/fd/2, as on any Linux.
  ln -s /proc/self/fd/2 /var/lib/ctrsh/dev.tmp/stderr
  # /dev/ptmx -> pts/ptmx, as on any Linux.
  ln -s pts/ptmx /var/lib/ctrsh/dev.tmp/ptmx
  # Publish the /dev template in one rename.
  mv -T /var/lib/ctrsh/dev.tmp /var/lib/ctrsh/dev
  undos=("${undos[@]:0:n}")  # made and kept: its clean-up undos lapse
fi

# == namespaces: create the namespaces, persisted as files so each later step can enter them ==
if [[ ! -e /run/ctrsh && ! -L /run/ctrsh ]]; then  # only if missing
  # ctrsh's runtime state lives here; made only if missing, and then removed once no container uses it.
  mkdir -p /run/ctrsh
  undo 'rmdir --ignore-fail-on-non-empty /run/ctrsh'
fi
# This container's state: its namespace files and its root mount point. mkdir fails if it exists, so two containers never share a name.
mkdir /run/ctrsh/web /run/ctrsh/web/ns /run/ctrsh/web/rootfs
undo 'rm -rf --one-file-system /run/ctrsh/web'
# A private mount point to hold namespace files: the kernel refuses them under a shared mount.
mount --bind --make-private /run/ctrsh/web/ns /run/ctrsh/web/ns
undo 'umount --recursive /run/ctrsh/web/ns'
# Empty files that namespaces will be bound to, keeping them alive.
touch /run/ctrsh/web/ns/mnt /run/ctrsh/web/ns/uts /run/ctrsh/web/ns/ipc
# A network namespace, kept alive at /run/netns/ctrsh-web: only lo, and it is down.
ip netns add ctrsh-web
undo 'ip netns delete ctrsh-web'
# Create the namespaces, bind each to its file, then set the hostname inside them (the host's is untouched). Private propagation: no mount made inside ever reaches the host.
unshare --mount=/run/ctrsh/web/ns/mnt --uts=/run/ctrsh/web/ns/uts --ipc=/run/ctrsh/web/ns/ipc --propagation private hostname web

# == filesystem: assemble the container's mounts inside its own mount namespace ==
if [[ ! -e /var/lib/ctrsh/containers && ! -L /var/lib/ctrsh/containers ]]; then  # only if missing
  # Where containers' writable layers live while they run (made once, kept).
  mkdir -p /var/lib/ctrsh/containers
fi
# This container's writable layer (upper) and overlayfs' scratch dir (work), on disk.
mkdir /var/lib/ctrsh/containers/web /var/lib/ctrsh/containers/web/upper /var/lib/ctrsh/containers/web/work
undo 'rm -rf --one-file-system /var/lib/ctrsh/containers/web'
# Root filesystem: the shared image read-only below, this container's own writes above (upper).
nsenter --mount=/run/ctrsh/web/ns/mnt -- mount -t overlay overlay -o lowerdir=/var/lib/ctrsh/images/busybox,upperdir=/var/lib/ctrsh/containers/web/upper,workdir=/var/lib/ctrsh/containers/web/work /run/ctrsh/web/rootfs
# A fresh, empty /dev: the container gets only the devices put there next, never the host's disks.
nsenter --mount=/run/ctrsh/web/ns/mnt -- mount -t tmpfs -o nosuid,strictatime,mode=0755,size=65536k tmpfs /run/ctrsh/web/rootfs/dev
# Fill /dev from the template: six devices, the fd links, the pts and shm mount points.
nsenter --mount=/run/ctrsh/web/ns/mnt -- cp -a /var/lib/ctrsh/dev/. /run/ctrsh/web/rootfs/dev/
# The container's own pty instance (newinstance): it cannot see the host's terminals.
nsenter --mount=/run/ctrsh/web/ns/mnt -- mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts /run/ctrsh/web/rootfs/dev/pts
# /dev/shm for POSIX shared memory, private to the container, 64 MiB as in Docker.
nsenter --mount=/run/ctrsh/web/ns/mnt -- mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm /run/ctrsh/web/rootfs/dev/shm
# /sys read-only, mounted from the container's network namespace so it lists only its interfaces.
nsenter --mount=/run/ctrsh/web/ns/mnt --net=/run/netns/ctrsh-web -- mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /run/ctrsh/web/rootfs/sys

# == network: configure the network namespace ==
# Lease 10.88.0.2 on ctrsh0 (the next free address in the registry now): a file naming this container, written under a lock on /run/ctrsh; fails if a live container holds it, so no two get the same address.
flock /run/ctrsh sh -euc 'state=$1 dir=$2 me=$3
shift 3
mkdir -p "$dir"
for key; do  # held by a container that still exists: fail, nothing claimed
  if [ -e "$dir/$key" ]; then
    holder=$(cat "$dir/$key")
    if [ "$holder" != "$me" ] && [ -d "$state/$holder" ]; then
      echo "$key is taken by container $holder" >&2
      exit 75
    fi
  fi
done
for key; do echo "$me" > "$dir/$key"; done
' ctrsh-claim /run/ctrsh /run/ctrsh/network/leases-ctrsh0 web 10.88.0.2
undo 'flock /run/ctrsh sh -euc '"'"'dir=$1 me=$2
shift 2
for key; do
  if [ "$(cat "$dir/$key" 2>/dev/null)" = "$me" ]; then rm -f "$dir/$key"; fi
done
rmdir "$dir" "${dir%/*}" 2>/dev/null || true
'"'"' ctrsh-release /run/ctrsh/network/leases-ctrsh0 web 10.88.0.2'
# Claim the published host ports the same way: two containers cannot both take one.
flock /run/ctrsh sh -euc 'state=$1 dir=$2 me=$3
shift 3
mkdir -p "$dir"
for key; do  # held by a container that still exists: fail, nothing claimed
  if [ -e "$dir/$key" ]; then
    holder=$(cat "$dir/$key")
    if [ "$holder" != "$me" ] && [ -d "$state/$holder" ]; then
      echo "$key is taken by container $holder" >&2
      exit 75
    fi
  fi
done
for key; do echo "$me" > "$dir/$key"; done
' ctrsh-claim /run/ctrsh /run/ctrsh/network/ports web tcp-8080
undo 'flock /run/ctrsh sh -euc '"'"'dir=$1 me=$2
shift 2
for key; do
  if [ "$(cat "$dir/$key" 2>/dev/null)" = "$me" ]; then rm -f "$dir/$key"; fi
done
rmdir "$dir" "${dir%/*}" 2>/dev/null || true
'"'"' ctrsh-release /run/ctrsh/network/ports web tcp-8080'
# The bridge ctrsh0, a virtual switch for the containers, with the gateway 10.88.0.1 on it: made (`ip link add … type bridge`, address, up) unless it exists; shared, so the last container out deletes it, and only if ctrsh made it.
flock /run/ctrsh sh -euc 'reg=$1 me=$2
shift 2
mkdir -p "$reg/users"
if [ -z "$(ls -A "$reg/users")" ]; then  # the first user sets it up, unless it is there already
  if ! ip link show dev "$1" >/dev/null 2>&1; then
    ip link add "$1" type bridge
    ip addr add "$2" dev "$1"
    ip link set "$1" up
    : > "$reg/made"
  fi
  echo "$3" > "$reg/subnet"
fi
: > "$reg/users/$me"
' ctrsh-share /run/ctrsh/network/bridge-ctrsh0 web ctrsh0 10.88.0.1/16 10.88.0.0/16
undo 'flock /run/ctrsh sh -euc '"'"'reg=$1 me=$2
shift 2
rm -f "$reg/users/$me"
if [ -z "$(ls -A "$reg/users" 2>/dev/null)" ]; then  # the last user out undoes what ctrsh did
  if [ -e "$reg/made" ]; then
    if ip link show dev "$1" >/dev/null 2>&1; then ip link delete "$1"; fi
  fi
  rm -f "$reg/made" "$reg/subnet"
  rmdir "$reg/users" "$reg" "${reg%/*}" 2>/dev/null || true
fi
'"'"' ctrsh-unshare /run/ctrsh/network/bridge-ctrsh0 web ctrsh0 10.88.0.1/16 10.88.0.0/16'
# A veth pair: a virtual cable, whatever goes in one end comes out of the other.
ip link add vethf50eb83ff0 type veth peer name cethf50eb83ff0
undo 'sh -euc '"'"'if ip link show dev "$1" >/dev/null 2>&1; then ip link delete "$1"; fi
'"'"' ctrsh-undo vethf50eb83ff0'
# Plug the host end into the bridge ctrsh0.
ip link set vethf50eb83ff0 master ctrsh0
# Bring the host end up.
ip link set vethf50eb83ff0 up
# Move the other end into the container's namespace.
ip link set cethf50eb83ff0 netns ctrsh-web
# Bring up loopback: a new network namespace starts with lo down.
ip -n ctrsh-web link set lo up
# Rename it eth0, as a container expects.
ip -n ctrsh-web link set cethf50eb83ff0 name eth0
# Bring eth0 up.
ip -n ctrsh-web link set eth0 up
# The container's address: on eth0, not on the bridged host end (that end is a switch port).
ip -n ctrsh-web addr add 10.88.0.2/16 dev eth0
# Everything off the subnet goes to the gateway: the host, through the bridge.
ip -n ctrsh-web route add default via 10.88.0.1
# Let the host route packets between interfaces (bridge <-> the outside). Shared by all containers; the last one out restores the old value, if ctrsh changed it.
flock /run/ctrsh sh -euc 'reg=$1 me=$2
shift 2
mkdir -p "$reg/users"
if [ -z "$(ls -A "$reg/users")" ]; then  # the first user sets it up, unless it is there already
  old=$(sysctl -n "$1")
  if [ "$old" != "$2" ]; then
    echo "$old" > "$reg/made"
    sysctl -q -w "$1=$2"
  fi
fi
: > "$reg/users/$me"
' ctrsh-share /run/ctrsh/network/ip_forward web net.ipv4.ip_forward 1
undo 'flock /run/ctrsh sh -euc '"'"'reg=$1 me=$2
shift 2
rm -f "$reg/users/$me"
if [ -z "$(ls -A "$reg/users" 2>/dev/null)" ]; then  # the last user out undoes what ctrsh did
  if [ -e "$reg/made" ]; then
    if sysctl -n "$1" >/dev/null 2>&1; then sysctl -q -w "$1=$(cat "$reg/made")"; fi
  fi
  rm -f "$reg/made" "$reg/subnet"
  rmdir "$reg/users" "$reg" "${reg%/*}" 2>/dev/null || true
fi
'"'"' ctrsh-unshare /run/ctrsh/network/ip_forward web net.ipv4.ip_forward 1'
# Outbound NAT: packets from the subnet leaving by any other interface get the host's address as source, so replies find their way back. Shared by the bridge's containers.
flock /run/ctrsh sh -euc 'reg=$1 me=$2
shift 2
mkdir -p "$reg/users"
if [ -z "$(ls -A "$reg/users")" ]; then  # the first user sets it up, unless it is there already
  t=$1 op=$2 ch=$3
  shift 3
  if ! iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then
    iptables -t "$t" "$op" "$ch" "$@"
    : > "$reg/made"
  fi
fi
: > "$reg/users/$me"
' ctrsh-share /run/ctrsh/network/masquerade-ctrsh0 web nat -A POSTROUTING -s 10.88.0.0/16 '!' -o ctrsh0 -j MASQUERADE -m comment --comment ctrsh:bridge/ctrsh0
undo 'flock /run/ctrsh sh -euc '"'"'reg=$1 me=$2
shift 2
rm -f "$reg/users/$me"
if [ -z "$(ls -A "$reg/users" 2>/dev/null)" ]; then  # the last user out undoes what ctrsh did
  if [ -e "$reg/made" ]; then
    t=$1 ch=$3
    shift 3
    if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
  fi
  rm -f "$reg/made" "$reg/subnet"
  rmdir "$reg/users" "$reg" "${reg%/*}" 2>/dev/null || true
fi
'"'"' ctrsh-unshare /run/ctrsh/network/masquerade-ctrsh0 web nat -A POSTROUTING -s 10.88.0.0/16 '"'"'!'"'"' -o ctrsh0 -j MASQUERADE -m comment --comment ctrsh:bridge/ctrsh0'
# Forward what the containers send (needed where the FORWARD policy is DROP).
flock /run/ctrsh sh -euc 'reg=$1 me=$2
shift 2
mkdir -p "$reg/users"
if [ -z "$(ls -A "$reg/users")" ]; then  # the first user sets it up, unless it is there already
  t=$1 op=$2 ch=$3
  shift 3
  if ! iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then
    iptables -t "$t" "$op" "$ch" "$@"
    : > "$reg/made"
  fi
fi
: > "$reg/users/$me"
' ctrsh-share /run/ctrsh/network/forward-out-ctrsh0 web filter -I FORWARD -i ctrsh0 -j ACCEPT -m comment --comment ctrsh:bridge/ctrsh0
undo 'flock /run/ctrsh sh -euc '"'"'reg=$1 me=$2
shift 2
rm -f "$reg/users/$me"
if [ -z "$(ls -A "$reg/users" 2>/dev/null)" ]; then  # the last user out undoes what ctrsh did
  if [ -e "$reg/made" ]; then
    t=$1 ch=$3
    shift 3
    if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
  fi
  rm -f "$reg/made" "$reg/subnet"
  rmdir "$reg/users" "$reg" "${reg%/*}" 2>/dev/null || true
fi
'"'"' ctrsh-unshare /run/ctrsh/network/forward-out-ctrsh0 web filter -I FORWARD -i ctrsh0 -j ACCEPT -m comment --comment ctrsh:bridge/ctrsh0'
# Forward the replies to them (under a DROP policy, new connections in only reach published ports).
flock /run/ctrsh sh -euc 'reg=$1 me=$2
shift 2
mkdir -p "$reg/users"
if [ -z "$(ls -A "$reg/users")" ]; then  # the first user sets it up, unless it is there already
  t=$1 op=$2 ch=$3
  shift 3
  if ! iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then
    iptables -t "$t" "$op" "$ch" "$@"
    : > "$reg/made"
  fi
fi
: > "$reg/users/$me"
' ctrsh-share /run/ctrsh/network/forward-back-ctrsh0 web filter -I FORWARD -o ctrsh0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment ctrsh:bridge/ctrsh0
undo 'flock /run/ctrsh sh -euc '"'"'reg=$1 me=$2
shift 2
rm -f "$reg/users/$me"
if [ -z "$(ls -A "$reg/users" 2>/dev/null)" ]; then  # the last user out undoes what ctrsh did
  if [ -e "$reg/made" ]; then
    t=$1 ch=$3
    shift 3
    if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
  fi
  rm -f "$reg/made" "$reg/subnet"
  rmdir "$reg/users" "$reg" "${reg%/*}" 2>/dev/null || true
fi
'"'"' ctrsh-unshare /run/ctrsh/network/forward-back-ctrsh0 web filter -I FORWARD -o ctrsh0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment ctrsh:bridge/ctrsh0'
# Publish host port 8080/tcp: packets from other hosts to any of this host's addresses go to 10.88.0.2:80. Only to local addresses: traffic passing through keeps its destination.
iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -p tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80 -m comment --comment ctrsh:web
undo 'sh -euc '"'"'t=$1 ch=$2
shift 2
if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
'"'"' ctrsh-undo nat PREROUTING -m addrtype --dst-type LOCAL -p tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80 -m comment --comment ctrsh:web'
# The same for the host's own connections (127.0.0.1, its own addresses): locally made packets skip PREROUTING.
iptables -t nat -A OUTPUT -m addrtype --dst-type LOCAL -p tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80 -m comment --comment ctrsh:web
undo 'sh -euc '"'"'t=$1 ch=$2
shift 2
if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
'"'"' ctrsh-undo nat OUTPUT -m addrtype --dst-type LOCAL -p tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80 -m comment --comment ctrsh:web'
# Let new connections to the published port through where the FORWARD policy is DROP.
iptables -t filter -I FORWARD -d 10.88.0.2 -o ctrsh0 -p tcp --dport 80 -j ACCEPT -m comment --comment ctrsh:web
undo 'sh -euc '"'"'t=$1 ch=$2
shift 2
if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
'"'"' ctrsh-undo filter FORWARD -d 10.88.0.2 -o ctrsh0 -p tcp --dport 80 -j ACCEPT -m comment --comment ctrsh:web'
# 127.0.0.1:PORT: a packet from 127.0.0.1 may leave by ctrsh0 only with route_localnet (else the kernel drops it as martian). The last user restores the old value.
flock /run/ctrsh sh -euc 'reg=$1 me=$2
shift 2
mkdir -p "$reg/users"
if [ -z "$(ls -A "$reg/users")" ]; then  # the first user sets it up, unless it is there already
  old=$(sysctl -n "$1")
  if [ "$old" != "$2" ]; then
    echo "$old" > "$reg/made"
    sysctl -q -w "$1=$2"
  fi
fi
: > "$reg/users/$me"
' ctrsh-share /run/ctrsh/network/route_localnet-ctrsh0 web net.ipv4.conf.ctrsh0.route_localnet 1
undo 'flock /run/ctrsh sh -euc '"'"'reg=$1 me=$2
shift 2
rm -f "$reg/users/$me"
if [ -z "$(ls -A "$reg/users" 2>/dev/null)" ]; then  # the last user out undoes what ctrsh did
  if [ -e "$reg/made" ]; then
    if sysctl -n "$1" >/dev/null 2>&1; then sysctl -q -w "$1=$(cat "$reg/made")"; fi
  fi
  rm -f "$reg/made" "$reg/subnet"
  rmdir "$reg/users" "$reg" "${reg%/*}" 2>/dev/null || true
fi
'"'"' ctrsh-unshare /run/ctrsh/network/route_localnet-ctrsh0 web net.ipv4.conf.ctrsh0.route_localnet 1'
# ...and the container could not answer 127.0.0.1 (its own lo): give such packets the gateway's address, 10.88.0.1, as source.
iptables -t nat -A POSTROUTING -s 127.0.0.0/8 -d 10.88.0.2 -p tcp --dport 80 -j MASQUERADE -m comment --comment ctrsh:web
undo 'sh -euc '"'"'t=$1 ch=$2
shift 2
if iptables -t "$t" -C "$ch" "$@" 2>/dev/null; then iptables -t "$t" -D "$ch" "$@"; fi
'"'"' ctrsh-undo nat POSTROUTING -s 127.0.0.0/8 -d 10.88.0.2 -p tcp --dport 80 -j MASQUERADE -m comment --comment ctrsh:web'

# == process: start the container's PID 1 ==
if ((stop)); then exit "$stop"; fi
# Enter the namespaces, fork PID 1 of a new PID namespace, mount its /proc, pivot_root into the rootfs, drop the old root, and exec the command with a clean environment.
nsenter --mount=/run/ctrsh/web/ns/mnt --uts=/run/ctrsh/web/ns/uts --ipc=/run/ctrsh/web/ns/ipc --net=/run/netns/ctrsh-web -- unshare --pid --cgroup --fork --kill-child -- sh -euc 'mount -t proc -o nosuid,nodev,noexec proc "$1/proc"
cd "$1"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
cd "$2"
shift 2
exec "$@"
' ctrsh-start /run/ctrsh/web/rootfs / env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root HOSTNAME=web /bin/sh -c 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -v -p 80 -h /www'
if ((stop)); then exit "$stop"; fi

# The EXIT trap now tears everything down: the undos above, newest first.
