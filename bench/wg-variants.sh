#!/bin/bash
# wg-variants.sh measures wireguard-go's data-path knobs against wireguard-go
# itself: the command at the version in our go.mod, built once as it is and
# once per changed constant (batch size, socket buffers), each pair of nodes
# run as our data plane runs it on 2 CPUs (GOMAXPROCS=1) over one veth, with
# iperf3 -P1 and -P4 interleaved round by round. Our data plane is that same
# wireguard-go code, so a knob that moves this moves us. With PROFILE=1 it
# also records a whole-machine `perf record -a` of the unchanged pair under
# -P1 and -P4 into PROFILE_DIR (default /tmp; docs/benchmarks.md, "Goals
# not met", reads them).
#
#   sudo bench/wg-variants.sh [ROUNDS]        # default 5
#
# Needs root, Go, iperf3, wg (bench/install.sh), and perf (linux-perf) for
# PROFILE=1. make bench-wg-variants runs it.
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

# name → (file, old text, new text) of the one constant it changes.
variants=(base batch64 batch256 sockbuf1m sockbuf32m)
declare -A patch=(
	[batch64]="conn/conn.go|IdealBatchSize = 128|IdealBatchSize = 64"
	[batch256]="conn/conn.go|IdealBatchSize = 128|IdealBatchSize = 256"
	[sockbuf1m]="conn/controlfns.go|socketBufferSize = 7 << 20|socketBufferSize = 1 << 20"
	[sockbuf32m]="conn/controlfns.go|socketBufferSize = 7 << 20|socketBufferSize = 32 << 20"
)
src=$(cd "$root" && $go mod download -json golang.zx2c4.com/wireguard@"$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
for v in "${variants[@]}"; do
	cp -r "$src" "$work/$v"
	chmod -R u+w "$work/$v"
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
		ip netns exec $p$n env LOG_LEVEL=error GOMAXPROCS=1 "$work/wg-$v" -f $p$i$n >"$work/$v$n.log" 2>&1 &
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
ip netns exec ${p}b iperf3 -s -D
sleep 0.5
for i in $(seq ${#variants[@]}); do
	ip netns exec ${p}a iperf3 -c 10.199.$i.2 -t 1 >/dev/null # first handshake, out of the timings
done

gbps() { python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'; }

if [ "${PROFILE:-}" = 1 ]; then
	for P in 1 4; do
		ip netns exec ${p}a iperf3 -c 10.199.1.2 -t 9 -P$P >/dev/null &
		client=$!
		sleep 2
		perf record -a -g -o "${PROFILE_DIR:-/tmp}/wg-variants-P$P.perf" -- sleep 5 >/dev/null 2>&1
		wait $client
		echo "profile of the unchanged pair under -P$P: ${PROFILE_DIR:-/tmp}/wg-variants-P$P.perf"
	done
fi

for r in $(seq "$rounds"); do
	i=0
	for v in "${variants[@]}"; do
		i=$((i + 1))
		for P in 1 4; do
			echo "$v P$P $(ip netns exec ${p}a iperf3 -c 10.199.$i.2 -t 5 -P$P -J | gbps)" >>"$work/results"
		done
	done
done

python3 - "$work/results" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    v, P, bps = line.split()
    runs[(v, P)].append(float(bps))
print("variant      P   median Gbit/s (min-max)   ratio to base")
for P in ("P1", "P4"):
    base = statistics.median(runs[("base", P)])
    for (v, q), xs in runs.items():
        if q == P:
            m = statistics.median(xs)
            print(f"{v:<12} {P}  {m:5.2f} ({min(xs):.2f}-{max(xs):.2f})        {m / base:.3f}")
EOF
