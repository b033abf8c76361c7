package ipam

import (
	"encoding/binary"
	"math"
	"math/bits"
	"net/netip"
)

// u128 is an address (or a count of addresses) as an unsigned 128-bit integer.
// IPv4 addresses occupy the low 32 bits. It keeps IPv6 arithmetic allocation
// free, which math/big would not.
type u128 struct{ hi, lo uint64 }

var u128Max = u128{math.MaxUint64, math.MaxUint64}

func u128From64(v uint64) u128 { return u128{0, v} }

func u128FromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (x u128) addr(is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(x.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], x.hi)
	binary.BigEndian.PutUint64(b[8:], x.lo)
	return netip.AddrFrom16(b)
}

func (x u128) cmp(y u128) int {
	switch {
	case x.hi < y.hi:
		return -1
	case x.hi > y.hi:
		return 1
	case x.lo < y.lo:
		return -1
	case x.lo > y.lo:
		return 1
	}
	return 0
}

func (x u128) less(y u128) bool { return x.cmp(y) < 0 }

func (x u128) isZero() bool { return x.hi == 0 && x.lo == 0 }

// add and sub wrap around, like the reference's wrapping address arithmetic;
// callers check bounds before relying on the result.
func (x u128) add(y u128) u128 {
	lo, c := bits.Add64(x.lo, y.lo, 0)
	hi, _ := bits.Add64(x.hi, y.hi, c)
	return u128{hi, lo}
}

func (x u128) sub(y u128) u128 {
	lo, b := bits.Sub64(x.lo, y.lo, 0)
	hi, _ := bits.Sub64(x.hi, y.hi, b)
	return u128{hi, lo}
}

func (x u128) inc() u128 { return x.add(u128{0, 1}) }
func (x u128) dec() u128 { return x.sub(u128{0, 1}) }

func (x u128) and(y u128) u128    { return u128{x.hi & y.hi, x.lo & y.lo} }
func (x u128) or(y u128) u128     { return u128{x.hi | y.hi, x.lo | y.lo} }
func (x u128) andNot(y u128) u128 { return u128{x.hi &^ y.hi, x.lo &^ y.lo} }

func (x u128) shl(n uint) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{x.lo << (n - 64), 0}
	case n == 0:
		return x
	}
	return u128{x.hi<<n | x.lo>>(64-n), x.lo << n}
}

func (x u128) shr(n uint) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{0, x.hi >> (n - 64)}
	case n == 0:
		return x
	}
	return u128{x.hi >> n, x.lo>>n | x.hi<<(64-n)}
}

// lowMask returns a value with the n low bits set (n <= 128).
func lowMask(n uint) u128 {
	if n >= 128 {
		return u128Max
	}
	return u128{0, 1}.shl(n).dec()
}

// saturate64 converts to uint64, clamping at math.MaxUint64.
func (x u128) saturate64() uint64 {
	if x.hi != 0 {
		return math.MaxUint64
	}
	return x.lo
}
