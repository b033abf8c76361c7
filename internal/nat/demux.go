package nat

import "encoding/binary"

// packetKind is what a datagram on the WireGuard port turns out to be.
type packetKind int

const (
	kindOther     packetKind = iota // neither: left to wireguard-go, which drops what it cannot use
	kindWireGuard                   // a WireGuard message: never ours
	kindSTUN                        // a STUN message: never wireguard-go's
)

func (k packetKind) String() string {
	switch k {
	case kindWireGuard:
		return "wireguard"
	case kindSTUN:
		return "stun"
	default:
		return "other"
	}
}

// classify looks at the first eight bytes and the length of a datagram.
//
// Every WireGuard message begins with a little-endian uint32 type of 1..4
// (handshake initiation, response, cookie reply, transport data), so its
// bytes 1..3 are zero. A STUN message (RFC 5389 §6) begins with two zero
// bits, carries the magic cookie at offset 4 and announces the length of
// its attributes in bytes 2..3. A WireGuard message read as STUN would
// announce zero bytes of attributes, i.e. a 20-byte datagram, and no
// WireGuard message is shorter than 32 bytes; the exact length check alone
// therefore keeps WireGuard packets out of our hands, and the explicit
// type check makes the common case one compare.
func classify(p []byte) packetKind {
	if len(p) < 4 {
		return kindOther
	}
	if t := binary.LittleEndian.Uint32(p); t-1 < 4 {
		return kindWireGuard
	}
	if isSTUN(p) {
		return kindSTUN
	}
	return kindOther
}

// isSTUN reports whether p is exactly one STUN message by its header. It
// is the receive-path check: no allocation, a handful of compares.
func isSTUN(p []byte) bool {
	return len(p) >= stunHeaderSize &&
		p[0]&0xC0 == 0 &&
		binary.BigEndian.Uint32(p[4:8]) == magicCookie &&
		int(binary.BigEndian.Uint16(p[2:4]))+stunHeaderSize == len(p) &&
		p[3]&3 == 0
}
