package darwinnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Values of the darwin ABI, written out so that the request layouts below
// can be built and tested on any platform; net_darwin.go checks at compile
// time that they equal the system's.
const (
	afInet  = 2
	afInet6 = 30

	ifNameSize = 16 // IFNAMSIZ

	sizeofSockaddrIn  = 16
	sizeofSockaddrIn6 = 28
	sizeofIfreq       = 32  // struct ifreq
	sizeofIfaliasreq  = 64  // struct ifaliasreq
	sizeofIn6Aliasreq = 128 // struct in6_aliasreq (LP64)
	sizeofIn6Ifreq    = 288 // struct in6_ifreq; its union's largest member is icmp6_ifstat

	iffUp = 0x1

	// ND6_INFINITE_LIFETIME: addresses we add never expire.
	nd6InfiniteLifetime = 0xffffffff
)

// iow and iowr encode ioctl request numbers as <sys/ioccom.h> does.
func iow(group byte, num uint8, size uintptr) uint {
	const iocIn = 0x80000000
	return iocIn | uint(size&0x1fff)<<16 | uint(group)<<8 | uint(num)
}

func iowr(group byte, num uint8, size uintptr) uint {
	const iocInOut = 0xc0000000
	return iocInOut | uint(size&0x1fff)<<16 | uint(group)<<8 | uint(num)
}

var (
	siocSIFFLAGS    = iow('i', 16, sizeofIfreq)
	siocGIFFLAGS    = iowr('i', 17, sizeofIfreq)
	siocDIFADDR     = iow('i', 25, sizeofIfreq)
	siocAIFADDR     = iow('i', 26, sizeofIfaliasreq)
	siocDIFADDRIn6  = iow('i', 25, sizeofIn6Ifreq)
	siocAIFADDRIn6  = iow('i', 26, sizeofIn6Aliasreq)
	siocSIFMTU      = iow('i', 52, sizeofIfreq)
	siocGIFMTU      = iowr('i', 51, sizeofIfreq)
	nativeByteOrder = binary.LittleEndian // every macOS machine (amd64, arm64)
)

func putName(b []byte, name string) error {
	if name == "" || len(name) >= ifNameSize {
		return fmt.Errorf("interface name %q must be 1 to %d bytes", name, ifNameSize-1)
	}
	copy(b[:ifNameSize], name)
	return nil
}

// putSockaddrIn writes a sockaddr_in for a at b[0:16].
func putSockaddrIn(b []byte, a netip.Addr) {
	b[0] = sizeofSockaddrIn
	b[1] = afInet
	a4 := a.As4()
	copy(b[4:8], a4[:])
}

// putSockaddrIn6 writes a sockaddr_in6 for a at b[0:28].
func putSockaddrIn6(b []byte, a netip.Addr) {
	b[0] = sizeofSockaddrIn6
	b[1] = afInet6
	a16 := a.As16()
	copy(b[8:24], a16[:])
}

// mask is the netmask of a prefix length as an address of the family.
func mask(bits, bitLen int) netip.Addr {
	var m [16]byte
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	if bitLen == 32 {
		return netip.AddrFrom4([4]byte(m[:4]))
	}
	return netip.AddrFrom16(m)
}

// ifreqFlags is a struct ifreq carrying interface flags (SIOCSIFFLAGS).
func ifreqFlags(name string, flags uint16) ([sizeofIfreq]byte, error) {
	var b [sizeofIfreq]byte
	if err := putName(b[:], name); err != nil {
		return b, err
	}
	nativeByteOrder.PutUint16(b[ifNameSize:], flags)
	return b, nil
}

// ifreqName is a struct ifreq with only the name set (SIOCGIFFLAGS).
func ifreqName(name string) ([sizeofIfreq]byte, error) {
	var b [sizeofIfreq]byte
	return b, putName(b[:], name)
}

// ifreqFlagsOf reads the flags a SIOCGIFFLAGS answer carries.
func ifreqFlagsOf(b [sizeofIfreq]byte) uint16 { return nativeByteOrder.Uint16(b[ifNameSize:]) }

// ifaliasreq4 is the SIOCAIFADDR request adding p to a point-to-point
// interface: the address, itself as the destination (utun has no peer
// address of its own; this is what `ifconfig utunN inet A A` does) and the
// netmask of p.
func ifaliasreq4(name string, p netip.Prefix) ([sizeofIfaliasreq]byte, error) {
	var b [sizeofIfaliasreq]byte
	if !p.Addr().Is4() {
		return b, fmt.Errorf("%s is not an IPv4 prefix", p)
	}
	if err := putName(b[:], name); err != nil {
		return b, err
	}
	putSockaddrIn(b[16:32], p.Addr()) // ifra_addr
	putSockaddrIn(b[32:48], p.Addr()) // ifra_broadaddr, the destination of a point-to-point link
	putSockaddrIn(b[48:64], mask(p.Bits(), 32))
	return b, nil
}

// ifreqAddr4 is the SIOCDIFADDR request removing address a.
func ifreqAddr4(name string, a netip.Addr) ([sizeofIfreq]byte, error) {
	var b [sizeofIfreq]byte
	if !a.Is4() {
		return b, fmt.Errorf("%s is not an IPv4 address", a)
	}
	if err := putName(b[:], name); err != nil {
		return b, err
	}
	putSockaddrIn(b[16:32], a)
	return b, nil
}

// in6Aliasreq is the SIOCAIFADDR_IN6 request adding p with infinite
// lifetimes, as `ifconfig utunN inet6 A prefixlen N alias` does.
func in6Aliasreq(name string, p netip.Prefix) ([sizeofIn6Aliasreq]byte, error) {
	var b [sizeofIn6Aliasreq]byte
	if !p.Addr().Is6() || p.Addr().Is4In6() {
		return b, fmt.Errorf("%s is not an IPv6 prefix", p)
	}
	if err := putName(b[:], name); err != nil {
		return b, err
	}
	putSockaddrIn6(b[16:44], p.Addr())                      // ifra_addr
	putSockaddrIn6(b[72:100], mask(p.Bits(), 128))          // ifra_prefixmask; ifra_dstaddr (44:72) stays empty
	nativeByteOrder.PutUint32(b[120:], nd6InfiniteLifetime) // ifra_lifetime.ia6t_vltime
	nativeByteOrder.PutUint32(b[124:], nd6InfiniteLifetime) // ifra_lifetime.ia6t_pltime
	return b, nil
}

// in6Ifreq is the SIOCDIFADDR_IN6 request removing address a.
func in6Ifreq(name string, a netip.Addr) ([sizeofIn6Ifreq]byte, error) {
	var b [sizeofIn6Ifreq]byte
	if !a.Is6() || a.Is4In6() {
		return b, fmt.Errorf("%s is not an IPv6 address", a)
	}
	if err := putName(b[:], name); err != nil {
		return b, err
	}
	putSockaddrIn6(b[16:44], a)
	return b, nil
}
