//go:build linux || freebsd || openbsd

package wg

import "golang.zx2c4.com/wireguard/tun"

const tunHint = "this needs CAP_NET_ADMIN and a TUN driver"

// createTUN makes the TUN interface under the requested name.
func createTUN(name string, mtu int) (tun.Device, error) {
	return tun.CreateTUN(name, mtu)
}
