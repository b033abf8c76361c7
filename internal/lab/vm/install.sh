#!/usr/bin/env bash
# Installs what the VM lab (internal/lab/vm, `make test-vm`) needs on a
# Debian or Ubuntu host, as root: QEMU, a static busybox, cpio and kmod
# (depmod) to build the guest, and the tools that go into the guest as
# observers and peers (ip, wg, nft, ping, dig, ...). Only missing packages
# are installed, always without recommends. The kernels themselves are
# fetched by the tests, through apt, into $ZLAYER_VM_CACHE
# (default /var/cache/zlayer-vm).
set -euo pipefail

PACKAGES=(
	qemu-system-x86 busybox-static cpio kmod
	iproute2 iputils-ping nftables iptables wireguard-tools dnsutils
	iperf3 tcpdump conntrack procps util-linux coturn ethtool
)

if [ "$(id -u)" != 0 ]; then
	echo "internal/lab/vm/install.sh: needs root (apt-get; the lab itself runs as root): sudo make test-vm" >&2
	exit 2
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$pkg")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "VM lab tools ready: $(qemu-system-x86_64 --version | head -1)"
