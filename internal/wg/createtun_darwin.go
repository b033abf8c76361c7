package wg

import "golang.zx2c4.com/wireguard/tun"

const tunHint = "creating a utun interface needs root"

// createTUN asks the kernel for a new utun interface. utun names cannot be
// chosen (the driver only accepts utunN), so the kernel picks the next free
// number; Open publishes which one it was under the device's stable name
// (see SystemName and publishSystemName).
func createTUN(_ string, mtu int) (tun.Device, error) {
	return tun.CreateTUN("utun", mtu)
}
