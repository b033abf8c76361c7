#!/bin/bash
# wg-variants.sh measures changes to wireguard-go's data path against
# wireguard-go itself: the command at the version in our go.mod, built once
# as upstream has it and once per variant (our fork's patches, candidates
# measured and dropped, changed constants: batch size, socket buffers), each
# pair of nodes run as our data plane runs it on 2 CPUs (GOMAXPROCS=1) over
# one veth, with iperf3 -P1 and -P4 interleaved round by round. Beside the
# rate it reports the CPU time per GB moved, of the whole machine and of the
# two wireguard-go processes: the work per byte, which moves less from run
# to run than the rate. Every variant first moves 64 MiB over TCP whose hash
# must arrive unchanged. With PROFILE=1 it also records a whole-machine
# `perf record -a` of the first variant's pair under -P1 and -P4 into
# PROFILE_DIR (default /tmp; docs/benchmarks.md, "Goals not met", reads
# them). VARIANTS="base fork" picks variants; base must be among them.
#
#   sudo bench/wg-variants.sh [ROUNDS]        # default 5
#
# Needs root, Go, iperf3, wg (bench/install.sh), python3, and perf
# (linux-perf) for PROFILE=1. make bench-wg-variants runs it.
set -euo pipefail
umask 077 # wg genkey's keys

rounds=${1:-5}
go=${GO:-go}
for bin in $go iperf3 wg python3 $([ "${PROFILE:-}" = 1 ] && echo perf); do
	command -v $bin >/dev/null || { echo "$bin is not installed (iperf3, wg: bench/install.sh; perf: apt-get install linux-perf)" >&2; exit 1; }
done
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(cd "$root" && $go list -m -f '{{.Version}}' golang.zx2c4.com/wireguard)
p=zlwv$$
work=$(mktemp -d /tmp/$p.XXXX)

cleanup() {
	for ns in ${p}a ${p}b; do
		ip netns pids $ns 2>/dev/null | xargs -r kill -9 2>/dev/null || true
	done
	sleep 0.2
	ip netns del ${p}a 2>/dev/null || true
	ip netns del ${p}b 2>/dev/null || true
	rm -f /var/run/wireguard/${p}*.sock
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# name → the patches applied, in order: fork is our fork's
# (third_party/wireguard-patches), fork-NNNN its patches up to NNNN, and
# the fork-scatter ones candidates measured on top of its first two and
# dropped, fork-pseudoheader one on top of all of them, fork-cryptobound*
# a bound, not a candidate, on top of the first three (before 0004 made the
# crypto cheaper): it encrypts only part of each packet to tell what
# cheaper crypto could gain, and is not secure (bench/wg-patches,
# docs/benchmarks.md); fork-multiqueue* a reader per queue of a multi-queue
# TUN on top of the fork; then name → (file, old text, new text) of the one
# constant it changes. dataplane is none of these: it runs the data plane
# process of our daemon (zlayer-overlayd wg-dataplane, the fork inside our
# binary and its PGO build) where the others run wireguard-go's command,
# which tells the fork's own gain from the process around it.
variants=(${VARIANTS:-base batch64 batch256 sockbuf1m sockbuf32m fork-0001 fork-0002 fork-0003 fork-0004 fork fork-scatter fork-scatter-tunread fork-pseudoheader fork-multiqueue fork-cryptobound fork-cryptobound70})
forkpatches=("$root"/third_party/wireguard-patches/*.patch)
upto() { # NNNN → our fork's patches up to NNNN
	local p
	for p in "${forkpatches[@]}"; do
		# NNNN-<subject>.patch: "~" sorts after every character of a
		# subject, so the names up to "NNNN-~" are patches 1 to NNNN.
		[[ $(basename "$p") > "$1-~" ]] || echo "$p"
	done
}
declare -A diff=(
	[fork]="${forkpatches[*]}"
	[fork-scatter]="$(upto 0002) $root/bench/wg-patches/scatter.patch"
	[fork-scatter-tunread]="$(upto 0002) $root/bench/wg-patches/scatter.patch $root/bench/wg-patches/tunread.patch"
	[fork-pseudoheader]="${forkpatches[*]} $root/bench/wg-patches/pseudoheader.patch"
	[fork-cryptobound]="$(upto 0003) $root/bench/wg-patches/cryptobound.patch"
	[fork-cryptobound70]="$(upto 0003) $root/bench/wg-patches/cryptobound.patch"
	[fork-peerqueue]="${forkpatches[*]} $root/bench/wg-patches/peerqueue.patch"
	[fork-queues128]="${forkpatches[*]} $root/bench/wg-patches/queues128.patch"
	[fork-multiqueue]="${forkpatches[*]} $root/bench/wg-patches/multiqueue.patch"
	[fork-mqflag]="${forkpatches[*]} $root/bench/wg-patches/multiqueue.patch"
	[fork-multiqueue-2p]="${forkpatches[*]} $root/bench/wg-patches/multiqueue.patch"
	[fork-2p]="${forkpatches[*]}"
)
# name → the environment its processes run with, over GOMAXPROCS=1: a
# multi-queue TUN of two queues, each with a reader (multiqueue.patch),
# and the same with the Go default of two Ps, beside the fork with two Ps
# (the knob the goal rules out, to tell what the queues add to it).
declare -A venv=(
	[fork-multiqueue]="WG_TUN_QUEUES=2"
	[fork-mqflag]="WG_TUN_QUEUES=1"
	[fork-multiqueue-2p]="WG_TUN_QUEUES=2 GOMAXPROCS=2"
	[fork-2p]="GOMAXPROCS=2"
)
for v in "${variants[@]}"; do
	[[ $v =~ ^fork-([0-9]{4})$ ]] && diff[$v]="$(upto "${BASH_REMATCH[1]}")"
done
declare -A patch=(
	[batch64]="conn/conn.go|IdealBatchSize = 128|IdealBatchSize = 64"
	[batch256]="conn/conn.go|IdealBatchSize = 128|IdealBatchSize = 256"
	[sockbuf1m]="conn/controlfns.go|socketBufferSize = 7 << 20|socketBufferSize = 1 << 20"
	[sockbuf32m]="conn/controlfns.go|socketBufferSize = 7 << 20|socketBufferSize = 32 << 20"
	[fork-cryptobound70]="device/send.go|cheapShare = 47|cheapShare = 70"
)
# Upstream's module, downloaded outside ours (go.mod replaces it with our
# fork, third_party/wireguard; the patches of bench/wg-patches measure
# changes to upstream, as the fork's did before it took them).
src=$(cd "$work" && GOFLAGS= $go mod download -json golang.zx2c4.com/wireguard@"$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
for v in "${variants[@]}"; do
	if [ "$v" = dataplane ]; then
		# Not a build of wireguard-go: our daemon's binary, whose
		# wg-dataplane command is the process the daemon runs each
		# userspace device in (the fork, with our PGO profile).
		(cd "$root" && $go build -o "$work/wg-$v" ./cmd/zlayer-overlayd)
		continue
	fi
	cp -r "$src" "$work/$v"
	chmod -R u+w "$work/$v"
	for d in ${diff[$v]:-}; do
		patch -s -d "$work/$v" -p1 <"$d"
	done
	if [ -n "${patch[$v]:-}" ]; then
		IFS='|' read -r file old new <<<"${patch[$v]}"
		grep -qF "$old" "$work/$v/$file" || { echo "$v: '$old' not in $file at $version" >&2; exit 1; }
		sed -i "s/$old/$new/" "$work/$v/$file"
	fi
	(cd "$work/$v" && GOFLAGS=-mod=mod $go build -o "$work/wg-$v" .)
done

ip netns add ${p}a
ip netns add ${p}b
ip link add ${p}va type veth peer name ${p}vb
for n in a b; do
	ip link set $p'v'$n netns $p$n
	ip -n $p$n link set lo up
	ip -n $p$n addr add 192.168.251.$([ $n = a ] && echo 1 || echo 2)/24 dev $p'v'$n
	ip -n $p$n link set $p'v'$n up
done
wg genkey >"$work/ka"
wg genkey >"$work/kb"

i=0
for v in "${variants[@]}"; do
	i=$((i + 1))
	for n in a b; do
		if [ "$v" = dataplane ]; then
			ip netns exec $p$n "$work/wg-$v" wg-dataplane -name $p$i$n -max-procs 1 -log-level error >"$work/$v$n.log" 2>&1 &
		else
			ip netns exec $p$n env LOG_LEVEL=error GOMAXPROCS=1 ${venv[$v]:-} "$work/wg-$v" -f $p$i$n >"$work/$v$n.log" 2>&1 &
		fi
		disown # cleanup kills it; no job notice
	done
	for n in a b; do
		for _ in $(seq 50); do [ -S /var/run/wireguard/$p$i$n.sock ] && break; sleep 0.1; done
	done
	port=$((51860 + i))
	ip netns exec ${p}a wg set ${p}${i}a listen-port $port private-key "$work/ka" \
		peer "$(wg pubkey <"$work/kb")" endpoint 192.168.251.2:$port allowed-ips 10.199.$i.2/32
	ip netns exec ${p}b wg set ${p}${i}b listen-port $port private-key "$work/kb" \
		peer "$(wg pubkey <"$work/ka")" endpoint 192.168.251.1:$port allowed-ips 10.199.$i.1/32
	for n in a b; do
		ip -n $p$n addr add 10.199.$i.$([ $n = a ] && echo 1 || echo 2)/24 dev $p$i$n
		ip -n $p$n link set $p$i$n mtu 1420 up
	done
done
# A variant that changes how bytes are moved must move them unchanged
# (iperf3 never looks at them): 64 MiB of random bytes cross each pair over
# TCP and are hashed on arrival.
cat >"$work/sink.py" <<'PY'
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 5999))
conn, _ = srv.accept()
h = hashlib.sha256()
while chunk := conn.recv(1 << 20):
    h.update(chunk)
print(h.hexdigest())
PY
head -c 64M /dev/urandom >"$work/blob"
want=$(sha256sum <"$work/blob" | cut -d' ' -f1)
i=0
for v in "${variants[@]}"; do
	i=$((i + 1))
	ip netns exec ${p}b timeout 60 python3 "$work/sink.py" 10.199.$i.2 >"$work/got" &
	sink=$!
	for _ in $(seq 50); do ip netns exec ${p}b ss -Hltn 'sport = 5999' | grep -q . && break; sleep 0.1; done
	ip netns exec ${p}a python3 -c 'import socket, sys
s = socket.create_connection((sys.argv[1], 5999))
s.sendall(open(sys.argv[2], "rb").read())' 10.199.$i.2 "$work/blob"
	wait $sink || true
	[ "$(cat "$work/got")" = "$want" ] || { echo "$v: 64 MiB crossed the overlay changed (sha256 $(cat "$work/got"), sent $want)" >&2; exit 1; }
done
echo "every variant moved 64 MiB unchanged"
ip netns exec ${p}b iperf3 -s -D
sleep 0.5
for i in $(seq ${#variants[@]}); do
	ip netns exec ${p}a iperf3 -c 10.199.$i.2 -t 1 >/dev/null # first handshake, out of the timings
done

# Work per byte, beside the rate: the machine's busy CPU time (/proc/stat,
# everything but idle and iowait: iperf3, both nodes and the kernel) and the
# two wireguard-go processes' own (utime+stime, their system calls included),
# in jiffies, read before and after each iperf3 run.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
wgcpu() {
	local t=0 pid
	for pid in $(pgrep -f "^$work/wg-$1 "); do
		t=$((t + $(awk '{print $14+$15}' /proc/$pid/stat)))
	done
	echo $t
}
measure() { # variant index P → "Gbit/s GB machine-jiffies wg-jiffies"
	local b0 w0 out
	b0=$(busy) w0=$(wgcpu "$1")
	out=$(ip netns exec ${p}a iperf3 -c 10.199.$2.2 -t 5 -P$3 -J)
	echo "$(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(e["bits_per_second"]/1e9, e["bytes"]/1e9)' <<<"$out") $(($(busy) - b0)) $(($(wgcpu "$1") - w0))"
}

if [ "${PROFILE:-}" = 1 ]; then
	for P in 1 4; do
		ip netns exec ${p}a iperf3 -c 10.199.1.2 -t 9 -P$P >/dev/null &
		client=$!
		sleep 2
		perf record -a -g -o "${PROFILE_DIR:-/tmp}/wg-variants-P$P.perf" -- sleep 5 >/dev/null 2>&1
		wait $client
		echo "profile of ${variants[0]} under -P$P: ${PROFILE_DIR:-/tmp}/wg-variants-P$P.perf"
	done
fi

for r in $(seq "$rounds"); do
	i=0
	for v in "${variants[@]}"; do
		i=$((i + 1))
		for P in 1 4; do
			echo "$v P$P $(measure "$v" $i $P)" >>"$work/results"
		done
	done
done

python3 - "$work/results" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
machine = collections.defaultdict(list)  # CPU seconds per GB moved
wg = collections.defaultdict(list)
hz = 100  # USER_HZ: /proc/stat and /proc/PID/stat count in 1/100 s
for line in open(sys.argv[1]):
    v, P, gbps, gb, busy, wgj = line.split()
    runs[(v, P)].append(float(gbps))
    machine[(v, P)].append(int(busy) / hz / float(gb))
    wg[(v, P)].append(int(wgj) / hz / float(gb))
print("variant        P   median Gbit/s (min-max)   ratio   CPU s/GB: machine (ratio)  wireguard-go (ratio)")
for P in ("P1", "P4"):
    base = statistics.median(runs[("base", P)])
    mbase = statistics.median(machine[("base", P)])
    wbase = statistics.median(wg[("base", P)])
    for (v, q), xs in runs.items():
        if q == P:
            m = statistics.median(xs)
            mc = statistics.median(machine[(v, P)])
            wc = statistics.median(wg[(v, P)])
            print(f"{v:<14} {P}  {m:5.2f} ({min(xs):.2f}-{max(xs):.2f})        {m / base:.3f}   {mc:.3f} ({mc / mbase:.3f})          {wc:.3f} ({wc / wbase:.3f})")
EOF
