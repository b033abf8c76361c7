package ipam

import (
	"fmt"
	"math"
	"net/netip"
)

// ParsePrefix parses a CIDR the way the main daemon sends it
// ("10.200.0.0/16", "fd00:200::/48"). Host bits are allowed and masked off, so
// "10.200.3.7/24" yields 10.200.3.0/24. A bare address without a prefix length
// is rejected: guessing /32 for a cluster CIDR would only fail later and more
// obscurely.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %w", s, err)
	}
	return p.Masked(), nil
}

// maxBits is 32 for IPv4 and 128 for IPv6.
func maxBits(p netip.Prefix) int { return p.Addr().BitLen() }

// prefixRange returns the first and last address of p as integers.
func prefixRange(p netip.Prefix) (first, last u128) {
	p = p.Masked()
	first = u128FromAddr(p.Addr())
	return first, first.or(lowMask(uint(maxBits(p) - p.Bits())))
}

// usableRange returns the first and last address of p that may be handed out
// (see the package documentation). Every valid prefix has at least one.
func usableRange(p netip.Prefix) (first, last u128) {
	first, last = prefixRange(p)
	hostBits := maxBits(p) - p.Bits()
	if hostBits >= 2 {
		first = first.inc() // network / subnet-router anycast
		if p.Addr().Is4() {
			last = last.dec() // IPv4 broadcast
		}
	}
	return first, last
}

// FirstUsable returns the first address of p that may be handed out: the
// gateway of a service subnet, the node IP of a node slice. ok is false only
// for an invalid prefix.
func FirstUsable(p netip.Prefix) (netip.Addr, bool) {
	if !p.IsValid() {
		return netip.Addr{}, false
	}
	first, _ := usableRange(p)
	return first.addr(p.Addr().Is4()), true
}

// checkSliceBits validates that sub-prefixes of length bits can be cut from
// parent, with messages that match the reference's wording.
func checkSliceBits(parent netip.Prefix, bits int) error {
	if !parent.IsValid() {
		return fmt.Errorf("%w: invalid parent prefix %s", ErrOutOfRange, parent)
	}
	if bits <= parent.Bits() {
		return fmt.Errorf("%w: slice prefix /%d must be more specific than %s", ErrOutOfRange, bits, parent)
	}
	if bits > maxBits(parent) {
		return fmt.Errorf("%w: slice prefix /%d exceeds the address family maximum /%d of %s", ErrOutOfRange, bits, maxBits(parent), parent)
	}
	return nil
}

// NumSlices returns how many aligned sub-prefixes of length bits fit in parent:
// 2^(bits-parent.Bits()), saturating at math.MaxUint64 when the exponent is 64
// or more (as the reference does, so modulo arithmetic over it agrees).
func NumSlices(parent netip.Prefix, bits int) (uint64, error) {
	if err := checkSliceBits(parent, bits); err != nil {
		return 0, err
	}
	return numSlices(parent, bits), nil
}

func numSlices(parent netip.Prefix, bits int) uint64 {
	e := bits - parent.Bits()
	if e >= 64 {
		return math.MaxUint64
	}
	return 1 << e
}

// SliceAt returns the idx-th aligned sub-prefix of length bits inside parent
// (idx 0 starts at the parent's network address).
func SliceAt(parent netip.Prefix, bits int, idx uint64) (netip.Prefix, error) {
	if err := checkSliceBits(parent, bits); err != nil {
		return netip.Prefix{}, err
	}
	if n := numSlices(parent, bits); idx >= n {
		return netip.Prefix{}, fmt.Errorf("%w: slice index %d of /%d in %s (there are %d)", ErrOutOfRange, idx, bits, parent, n)
	}
	return sliceAt(parent.Masked(), bits, idx), nil
}

func sliceAt(parent netip.Prefix, bits int, idx uint64) netip.Prefix {
	base := u128FromAddr(parent.Addr())
	a := base.add(u128From64(idx).shl(uint(maxBits(parent) - bits)))
	return netip.PrefixFrom(a.addr(parent.Addr().Is4()), bits)
}

// sliceIndex returns the index of the slice of length bits inside parent that
// contains address x (which must lie in parent).
func sliceIndex(parent netip.Prefix, bits int, x u128) u128 {
	base := u128FromAddr(parent.Addr())
	return x.sub(base).shr(uint(maxBits(parent) - bits))
}

// DefaultServiceBits is the reference's service subnet size: /28 for IPv4,
// /120 for IPv6.
func DefaultServiceBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 28
	}
	return 120
}

// DefaultSliceBits is the reference leader's node slice size: /28 for IPv4,
// /120 for IPv6.
func DefaultSliceBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 28
	}
	return 120
}

// Overlaps reports whether a shares at least one address with any of others.
// Prefixes of the other address family never overlap.
func Overlaps(a netip.Prefix, others []netip.Prefix) bool {
	for _, o := range others {
		if a.Overlaps(o) {
			return true
		}
	}
	return false
}
