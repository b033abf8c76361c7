#!/usr/bin/env bash
# Installs the peers the benchmarks compare against, at pinned versions,
# on a fresh Debian 12 machine (run as root; `make bench` calls it).
#
#   Debian:  dnsperf, dnsmasq (the dnsmasq-base package: the binary without
#            the system service), iperf3, wireguard-tools (wg), iproute2,
#            openssl (bench-crypto's reference ChaCha20-Poly1305)
#   Go:      CNI plugins bridge + host-local, CoreDNS, upstream wireguard-go
#            (the version go.mod requires, which our fork in
#            third_party/wireguard patches),
#            cnitool (the CNI library version zlayer-cni uses, from go.mod)
#
# Go tools go to $BENCH_TOOLS (default /var/tmp/zlayer-bench/bin) and are
# rebuilt only when the installed version differs from the pinned one.
set -euo pipefail

BENCH_TOOLS=${BENCH_TOOLS:-/var/tmp/zlayer-bench/bin}
CNI_VERSION=v1.10.0
COREDNS_VERSION=v1.15.0   # newest CoreDNS that builds with go1.26.8 through the module proxy
APT_PINS=(
	dnsperf=2.10.0-2
	dnsmasq-base=2.90-4~deb12u2
	iperf3=3.12-1+deb12u2
	wireguard-tools=1.0.20210914-1+b1
	iproute2
	util-linux
	openssl
	gcc
	libc6-dev
	libssl-dev
)

cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "bench/install.sh: needs root (apt-get, network namespaces); run: sudo make bench" >&2
	exit 2
fi

need_apt=()
for spec in "${APT_PINS[@]}"; do
	pkg=${spec%%=*}
	want=${spec#*=}
	# dpkg-query fails for a package it has never seen: on a fresh machine
	# that is "not installed", not a reason for set -e to stop here.
	have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null | sed -n 's/^install ok installed //p' || true)
	if [ -z "$have" ] || { [ "$want" != "$spec" ] && [ "$have" != "$want" ]; }; then
		need_apt+=("$spec")
	fi
done
if [ ${#need_apt[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	if ! apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; then
		# A security update can replace a pinned version in the archive;
		# take the current one rather than fail, and say so.
		echo "bench/install.sh: a pinned Debian version is gone from the archive; installing the current ones:" >&2
		unpinned=("${need_apt[@]%%=*}")
		apt-get install -y -qq --no-install-recommends "${unpinned[@]}"
	fi
fi
for pkg in dnsperf dnsmasq-base iperf3 wireguard-tools; do
	echo "  $pkg $(dpkg-query -W -f='${Version}' "$pkg")"
done

WG_VERSION=$(go list -m -f '{{.Version}}' golang.zx2c4.com/wireguard)
CNILIB_VERSION=$(go list -m -f '{{.Version}}' github.com/containernetworking/cni)
mkdir -p "$BENCH_TOOLS"

# install_go BINARY MODULE PACKAGE VERSION
install_go() {
	local bin=$1 mod=$2 pkg=$3 version=$4
	if [ -x "$BENCH_TOOLS/$bin" ] && go version -m "$BENCH_TOOLS/$bin" | grep -qE "^\s+mod\s+$mod\s+$version(\s|$)"; then
		echo "  $bin $version (installed)"
		return
	fi
	echo "  $bin $version: go install $pkg@$version"
	(cd /tmp && GOTOOLCHAIN=local GOFLAGS= GOBIN="$BENCH_TOOLS" go install "$pkg@$version")
}
install_go bridge github.com/containernetworking/plugins github.com/containernetworking/plugins/plugins/main/bridge "$CNI_VERSION"
install_go host-local github.com/containernetworking/plugins github.com/containernetworking/plugins/plugins/ipam/host-local "$CNI_VERSION"
install_go coredns github.com/coredns/coredns github.com/coredns/coredns "$COREDNS_VERSION"
install_go wireguard golang.zx2c4.com/wireguard golang.zx2c4.com/wireguard "$WG_VERSION"
install_go cnitool github.com/containernetworking/cni github.com/containernetworking/cni/cnitool "$CNILIB_VERSION"
echo "bench tools ready in $BENCH_TOOLS"
