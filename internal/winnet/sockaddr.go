package winnet

import (
	"encoding/binary"
	"net/netip"
)

// Address families of winsock (AF_INET6 is 23 on Windows, not Linux's 10).
const (
	afUnspec = 0
	afInet   = 2
	afInet6  = 23
)

// sizeofSockaddrInet is sizeof(SOCKADDR_INET), the union of sockaddr_in
// and sockaddr_in6 the IP Helper rows embed.
const sizeofSockaddrInet = 28

// sockaddrInet lays a out as a SOCKADDR_INET. The family is stored in host
// (little-endian) order, the address in network order, like winsock does.
func sockaddrInet(a netip.Addr) [sizeofSockaddrInet]byte {
	var b [sizeofSockaddrInet]byte
	switch {
	case !a.IsValid():
		// AF_UNSPEC, all zero: "no next hop" in a route row.
	case a.Is4() || a.Is4In6():
		binary.LittleEndian.PutUint16(b[0:], afInet)
		a4 := a.Unmap().As4()
		copy(b[4:8], a4[:])
	default:
		binary.LittleEndian.PutUint16(b[0:], afInet6)
		a16 := a.As16()
		copy(b[8:24], a16[:])
	}
	return b
}

// addrOfSockaddrInet reads a SOCKADDR_INET; ok is false for another family.
func addrOfSockaddrInet(b [sizeofSockaddrInet]byte) (netip.Addr, bool) {
	switch binary.LittleEndian.Uint16(b[0:]) {
	case afInet:
		return netip.AddrFrom4([4]byte(b[4:8])), true
	case afInet6:
		return netip.AddrFrom16([16]byte(b[8:24])), true
	}
	return netip.Addr{}, false
}

// familyOf is the winsock family of an address.
func familyOf(a netip.Addr) uint16 {
	if a.Is4() {
		return afInet
	}
	return afInet6
}
