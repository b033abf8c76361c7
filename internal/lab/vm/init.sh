#!/bin/busybox sh
# PID 1 of the lab guest. It gives the suites what a host gives them (the
# kernel file systems, /run, /tmp, loopback, module autoloading), runs the
# suites in /zlvm/suites.sh one after the other, and reports on the second
# serial port (ttyS1), between markers the host parses:
#
#   === ZLVM BOOTED <uname -r>
#   === ZLVM BEGIN <suite>
#   ...the suite's output...
#   === ZLVM END <suite> rc=<exit code> seconds=<n>
#   === ZLVM LEFTOVER <suite> <what the suite left behind>
#   === ZLVM DONE
#
# The kernel's own messages stay on ttyS0, so they never interleave with
# a suite's output. Then it powers the machine off, which ends QEMU.

/bin/busybox mkdir -p /zlvm/bb
/bin/busybox --install -s /zlvm/bb
for tool in $(/bin/busybox cat /zlvm/tools); do
	/bin/busybox rm -f "/zlvm/bb/$tool"
done
# The host's tools first; busybox fills in the rest (sh, modprobe, ...).
# This shell itself runs its applets without a PATH search (Debian's
# busybox-static prefers them), so the host's ip is called by path.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/zlvm/bb
for IP in /usr/sbin/ip /sbin/ip /usr/bin/ip /bin/ip; do
	[ -x "$IP" ] && break
done
export HOME=/root TMPDIR=/tmp LC_ALL=C

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /run/netns /run/wireguard /run/lock

# Netlink requests for a missing link kind, netfilter expression or
# protocol make the kernel run this helper, as udev-less hosts do.
echo /zlvm/bb/modprobe > /proc/sys/kernel/modprobe
# devtmpfs has /dev/net/tun only once the module is in; opening the node
# is what the tests (and wireguard-go) do, so load it up front.
modprobe tun
hostname zlvm
"$IP" link set lo up

exec 3>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
report() { echo "=== ZLVM $*" >&3; }

# snapshot lists what suites must not leave behind: namespaces and links
# of the root namespace, and WireGuard UAPI sockets (a data plane killed
# without its socket removed leaves one that wg(8) then lists).
snapshot() {
	"$IP" netns list 2>&1 | sed 's/ (id.*//' | sort | sed 's/^/netns /'
	"$IP" -o link show 2>&1 | awk -F': ' '{ split($2, n, "@"); print "link " n[1] }' | sort
	ls /run/wireguard | sort | sed 's/^/uapi /'
}
snapshot > /tmp/zlvm-baseline

suite() {
	name=$1 dir=$2
	shift 2
	report "BEGIN $name"
	start=$(date +%s)
	(cd "/zlvm/src/$dir" && exec env "$@") >&3 2>&1 </dev/null
	rc=$?
	report "END $name rc=$rc seconds=$(($(date +%s) - start))"
	snapshot > /tmp/zlvm-now
	left=$(grep -vxF -f /tmp/zlvm-baseline /tmp/zlvm-now | tr '\n' ' ')
	[ -n "$left" ] && report "LEFTOVER $name $left"
	# Each suite answers only for what it left.
	mv /tmp/zlvm-now /tmp/zlvm-baseline
}

report "BOOTED $(uname -r) cpus=$(nproc) mem_kb=$(awk '/MemTotal/ { print $2 }' /proc/meminfo)"
. /zlvm/suites.sh
report "MODULES $(awk '{ print $1 }' /proc/modules | sort | tr '\n' ' ')"
report "DONE"
sync
poweroff -f
