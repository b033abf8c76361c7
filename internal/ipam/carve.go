package ipam

import (
	"fmt"
	"net/netip"
)

// maxProbeHostBits bounds how large a candidate CarveSubnet probes address by
// address with inUse: 2^16 addresses (an IPv4 /16, an IPv6 /112). Service
// subnets are /28 or /120; larger carves should use Pool.Carve, which checks a
// candidate against the pool's ranges in O(log n).
const maxProbeHostBits = 16

// CarveSubnet finds an aligned sub-prefix of length bits inside slice for a
// service subnet. It takes the HIGHEST free candidate first, keeping service
// subnets away from the node IP and the low end where the slice pool hands out
// addresses. A candidate is skipped when it overlaps any prefix in taken or
// contains an address for which inUse (which may be nil) returns true.
//
// inUse is called for each address of a candidate, so with a non-nil inUse the
// candidate may hold at most 2^16 addresses. ok is false when nothing fits or
// the request is invalid (bits not more specific than slice, beyond the family
// maximum, or too large to probe).
func CarveSubnet(slice netip.Prefix, bits int, taken []netip.Prefix, inUse func(netip.Addr) bool) (netip.Prefix, bool) {
	if checkSliceBits(slice, bits) != nil {
		return netip.Prefix{}, false
	}
	hostBits := maxBits(slice) - bits
	if inUse != nil && hostBits > maxProbeHostBits {
		return netip.Prefix{}, false
	}
	is4 := slice.Addr().Is4()
	blockers := spansOf(taken, is4)
	return carveHighest(slice.Masked(), bits, func(first, last u128) (u128, bool) {
		if low, ok := blockers.lowestOverlapping(first, last); ok {
			return low, true
		}
		if inUse != nil {
			for x := last; ; x = x.dec() {
				if inUse(x.addr(is4)) {
					return x, true
				}
				if x == first {
					break
				}
			}
		}
		return u128{}, false
	})
}

// Carve finds the highest aligned sub-prefix of length bits in the pool's
// prefix that overlaps nothing in taken and holds no allocated, reserved or
// excluded address, and excludes it from the pool. It is CarveSubnet for a
// slice whose pool is known, without the per-address probing, so it also
// suits large IPv6 carves.
func (p *Pool) Carve(bits int, taken []netip.Prefix) (netip.Prefix, error) {
	if err := checkSliceBits(p.prefix, bits); err != nil {
		return netip.Prefix{}, err
	}
	blockers := spansOf(taken, p.is4)
	sub, ok := carveHighest(p.prefix, bits, func(first, last u128) (u128, bool) {
		var low u128
		blocked := false
		for _, s := range [...]*spanSet{&blockers, &p.alloc, &p.reserved, &p.excl} {
			if x, ok := s.lowestOverlapping(first, last); ok && (!blocked || x.less(low)) {
				low, blocked = x, true
			}
		}
		return low, blocked
	})
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%w: no free /%d left in %s", ErrExhausted, bits, p.prefix)
	}
	if err := p.Exclude(sub); err != nil {
		return netip.Prefix{}, err
	}
	return sub, nil
}

// carveHighest walks the aligned blocks of length bits in parent from the top
// down. blockedFrom reports whether a candidate is blocked and the lowest
// address of whatever blocks it; because a blocker is contiguous, every
// candidate between that address and the current one is blocked too, so the
// walk jumps below it. The walk is therefore bounded by the number of blockers,
// not by the size of parent.
func carveHighest(parent netip.Prefix, bits int, blockedFrom func(first, last u128) (u128, bool)) (netip.Prefix, bool) {
	pf, pl := prefixRange(parent)
	hostMask := lowMask(uint(maxBits(parent) - bits))
	blockSize := hostMask.inc()
	is4 := parent.Addr().Is4()
	c := pl.andNot(hostMask)
	for {
		low, blocked := blockedFrom(c, c.or(hostMask))
		if !blocked {
			return netip.PrefixFrom(c.addr(is4), bits), true
		}
		below := low.andNot(hostMask)
		if c.less(below) {
			below = c
		}
		if !pf.less(below) {
			return netip.Prefix{}, false
		}
		c = below.sub(blockSize)
	}
}
