package wg

import (
	"encoding/binary"

	"golang.org/x/sys/windows"
	"golang.zx2c4.com/wireguard/tun"
)

const tunHint = "this needs Administrator rights and wintun.dll beside zlayer-overlayd.exe"

// createTUN creates a Wintun adapter whose alias is name. The adapter's
// GUID is derived from the name, so the same device gets the same GUID
// after every restart: Windows keys the adapter's network profile and
// firewall category by GUID, and a random one would pile up a new
// "network" in the Network List Service on every start.
func createTUN(name string, mtu int) (tun.Device, error) {
	g := adapterGUID(name)
	guid := windows.GUID{
		Data1: binary.BigEndian.Uint32(g[0:4]),
		Data2: binary.BigEndian.Uint16(g[4:6]),
		Data3: binary.BigEndian.Uint16(g[6:8]),
	}
	copy(guid.Data4[:], g[8:16])
	return tun.CreateTUNWithRequestedGUID(name, &guid, mtu)
}
