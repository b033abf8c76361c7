package ipam

import (
	"fmt"
	"net/netip"
	"slices"
)

// Pool hands out the addresses of one prefix, lowest free first. Unlike the
// reference allocator it never reuses addresses LIFO, never accepts the release
// of an address it did not hand out, and never hands out reserved or excluded
// addresses.
//
// Allocated, reserved and excluded addresses are disjoint: an address cannot
// be reserved while allocated, and a range cannot be excluded while it holds an
// allocated or reserved address.
//
// A Pool is not safe for concurrent use; the engine serialises access.
type Pool struct {
	prefix      netip.Prefix
	is4         bool
	first, last u128 // usable range

	alloc    spanSet
	nAlloc   uint64
	reserved spanSet
	nResv    uint64
	excluded []netip.Prefix // as given (masked), in insertion order
	excl     spanSet        // union of excluded
}

// NewPool returns an empty pool over p. Host bits of p are masked off.
func NewPool(p netip.Prefix) (*Pool, error) {
	if !p.IsValid() {
		return nil, fmt.Errorf("%w: cannot build an address pool over invalid prefix %s", ErrOutOfRange, p)
	}
	p = p.Masked()
	first, last := usableRange(p)
	return &Pool{prefix: p, is4: p.Addr().Is4(), first: first, last: last}, nil
}

// Prefix returns the pool's (masked) prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// FirstUsable returns the first usable address of the prefix, regardless of
// what is allocated, reserved or excluded: the gateway or node IP.
func (p *Pool) FirstUsable() (netip.Addr, bool) { return FirstUsable(p.prefix) }

// Allocate hands out the lowest usable address that is neither allocated,
// reserved nor excluded.
func (p *Pool) Allocate() (netip.Addr, error) {
	x, ok := p.lowestFree()
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w: no free address left in %s (%d usable, %d allocated, %d reserved)",
			ErrExhausted, p.prefix, p.Size(), p.nAlloc, p.nResv)
	}
	p.alloc.add(x, x)
	p.nAlloc++
	return x.addr(p.is4), nil
}

// lowestFree alternates between the three sets until it finds an address
// that none of them holds. Each round skips at least one whole span, so the
// loop is bounded by the number of spans between first and the answer.
func (p *Pool) lowestFree() (u128, bool) {
	x := p.first
	for {
		start := x
		for _, s := range [...]*spanSet{&p.alloc, &p.reserved, &p.excl} {
			var ok bool
			if x, ok = s.nextFree(x); !ok {
				return u128{}, false
			}
		}
		if p.last.less(x) {
			return u128{}, false
		}
		if x == start {
			return x, true
		}
	}
}

// check validates that a lies in the pool's prefix and returns it as an
// integer.
func (p *Pool) check(a netip.Addr) (u128, error) {
	switch {
	case !a.IsValid():
		return u128{}, fmt.Errorf("%w: invalid address for pool %s", ErrOutOfRange, p.prefix)
	case a.Is4() != p.is4:
		return u128{}, fmt.Errorf("%w: %s is %s but pool %s is %s", ErrFamily, a, familyName(a.Is4()), p.prefix, familyName(p.is4))
	case !p.prefix.Contains(a):
		return u128{}, fmt.Errorf("%w: %s is not in %s", ErrOutOfRange, a, p.prefix)
	}
	return u128FromAddr(a), nil
}

func familyName(is4 bool) string {
	if is4 {
		return "IPv4"
	}
	return "IPv6"
}

// unusableReason says why an address of the prefix is never handed out, or
// returns "" for a usable address.
func (p *Pool) unusableReason(x u128) string {
	switch {
	case x.less(p.first) && p.is4:
		return "the network address"
	case x.less(p.first):
		return "the subnet-router anycast address"
	case p.last.less(x):
		return "the broadcast address"
	}
	return ""
}

// conflict returns the error for an address that cannot be taken, or nil.
func (p *Pool) conflict(a netip.Addr, x u128) error {
	if r := p.unusableReason(x); r != "" {
		return fmt.Errorf("%w: %s is %s of %s and is never handed out", ErrReserved, a, r, p.prefix)
	}
	if p.alloc.contains(x) {
		return fmt.Errorf("%w: %s in %s is already allocated", ErrInUse, a, p.prefix)
	}
	if p.reserved.contains(x) {
		return fmt.Errorf("%w: %s in %s is reserved", ErrReserved, a, p.prefix)
	}
	if p.excl.contains(x) {
		return fmt.Errorf("%w: %s lies in %s, which is excluded from %s", ErrExcluded, a, p.excludedContaining(a), p.prefix)
	}
	return nil
}

func (p *Pool) excludedContaining(a netip.Addr) netip.Prefix {
	for _, e := range p.excluded {
		if e.Contains(a) {
			return e
		}
	}
	return netip.Prefix{}
}

// AllocateSpecific marks a as allocated, e.g. when restoring state or when the
// main daemon asks for a fixed address.
func (p *Pool) AllocateSpecific(a netip.Addr) error {
	x, err := p.check(a)
	if err != nil {
		return err
	}
	if err := p.conflict(a, x); err != nil {
		return err
	}
	p.alloc.add(x, x)
	p.nAlloc++
	return nil
}

// Reserve keeps a out of circulation (a gateway, say): Allocate never returns
// it and Release refuses it. Reserving an address that is already reserved,
// including the network or broadcast address, is a no-op.
func (p *Pool) Reserve(a netip.Addr) error {
	x, err := p.check(a)
	if err != nil {
		return err
	}
	if p.unusableReason(x) != "" || p.reserved.contains(x) {
		return nil
	}
	if err := p.conflict(a, x); err != nil {
		return err
	}
	p.reserved.add(x, x)
	p.nResv++
	return nil
}

// Unreserve returns a reserved address to circulation.
func (p *Pool) Unreserve(a netip.Addr) error {
	x, err := p.check(a)
	if err != nil {
		return err
	}
	if r := p.unusableReason(x); r != "" {
		return fmt.Errorf("%w: %s is %s of %s and stays reserved", ErrReserved, a, r, p.prefix)
	}
	if !p.reserved.contains(x) {
		return fmt.Errorf("%w: %s is not reserved in %s", ErrNotReserved, a, p.prefix)
	}
	p.reserved.remove(x, x)
	p.nResv--
	return nil
}

// Release returns an address handed out by Allocate or AllocateSpecific. It
// refuses reserved addresses (ErrReserved) and addresses the pool never handed
// out (ErrNotAllocated), so a confused caller cannot free someone else's
// address for reuse.
func (p *Pool) Release(a netip.Addr) error {
	x, err := p.check(a)
	if err != nil {
		return err
	}
	if !p.alloc.contains(x) {
		if r := p.unusableReason(x); r != "" {
			return fmt.Errorf("%w: %s is %s of %s and was never allocated", ErrReserved, a, r, p.prefix)
		}
		if p.reserved.contains(x) {
			return fmt.Errorf("%w: %s is reserved in %s and cannot be released", ErrReserved, a, p.prefix)
		}
		return fmt.Errorf("%w: %s was never allocated from %s", ErrNotAllocated, a, p.prefix)
	}
	p.alloc.remove(x, x)
	p.nAlloc--
	return nil
}

// IsAllocated reports whether a is currently allocated.
func (p *Pool) IsAllocated(a netip.Addr) bool {
	x, err := p.check(a)
	return err == nil && p.alloc.contains(x)
}

// IsReserved reports whether a is reserved, explicitly or because it is the
// network or broadcast address of the prefix.
func (p *Pool) IsReserved(a netip.Addr) bool {
	x, err := p.check(a)
	return err == nil && (p.unusableReason(x) != "" || p.reserved.contains(x))
}

// IsExcluded reports whether a lies in an excluded sub-range.
func (p *Pool) IsExcluded(a netip.Addr) bool {
	x, err := p.check(a)
	return err == nil && p.excl.contains(x)
}

// Exclude carves sub out of the pool (a service subnet cut from the node
// slice): its addresses are never handed out until Include. It fails when sub
// is not inside the pool's prefix or still holds an allocated or reserved
// address. Excluding a prefix that is already excluded is a no-op.
func (p *Pool) Exclude(sub netip.Prefix) error {
	if !sub.IsValid() {
		return fmt.Errorf("%w: cannot exclude invalid prefix %s from %s", ErrOutOfRange, sub, p.prefix)
	}
	if sub.Addr().Is4() != p.is4 {
		return fmt.Errorf("%w: cannot exclude %s prefix %s from %s pool %s", ErrFamily, familyName(sub.Addr().Is4()), sub, familyName(p.is4), p.prefix)
	}
	sub = sub.Masked()
	if sub.Bits() < p.prefix.Bits() || !p.prefix.Contains(sub.Addr()) {
		return fmt.Errorf("%w: cannot exclude %s, it is not inside %s", ErrOutOfRange, sub, p.prefix)
	}
	if slices.Contains(p.excluded, sub) {
		return nil
	}
	f, l := prefixRange(sub)
	if x, ok := p.alloc.lowestOverlapping(f, l); ok {
		if x.less(f) {
			x = f
		}
		return fmt.Errorf("%w: cannot exclude %s from %s, %s is allocated", ErrInUse, sub, p.prefix, x.addr(p.is4))
	}
	if x, ok := p.reserved.lowestOverlapping(f, l); ok {
		return fmt.Errorf("%w: cannot exclude %s from %s, %s is reserved", ErrReserved, sub, p.prefix, x.addr(p.is4))
	}
	p.excluded = append(p.excluded, sub)
	p.excl.add(f, l)
	return nil
}

// Include undoes Exclude(sub). Including a prefix that was never excluded does
// nothing. Addresses that another, still excluded prefix covers stay excluded.
func (p *Pool) Include(sub netip.Prefix) {
	sub = sub.Masked()
	i := slices.Index(p.excluded, sub)
	if i < 0 {
		return
	}
	p.excluded = slices.Delete(p.excluded, i, i+1)
	p.excl = spanSet{}
	for _, e := range p.excluded {
		p.excl.add(prefixRange(e))
	}
}

// Allocated returns the allocated addresses in ascending order.
func (p *Pool) Allocated() []netip.Addr {
	return p.collect(&p.alloc, p.nAlloc)
}

// Reserved returns the explicitly reserved addresses in ascending order (not
// the network or broadcast address).
func (p *Pool) Reserved() []netip.Addr {
	return p.collect(&p.reserved, p.nResv)
}

func (p *Pool) collect(s *spanSet, n uint64) []netip.Addr {
	out := make([]netip.Addr, 0, n)
	s.each(func(x u128) bool {
		out = append(out, x.addr(p.is4))
		return true
	})
	return out
}

// Excluded returns the excluded prefixes in the order they were excluded.
func (p *Pool) Excluded() []netip.Prefix { return slices.Clone(p.excluded) }

// Used returns how many addresses are allocated or explicitly reserved.
func (p *Pool) Used() uint64 { return p.nAlloc + p.nResv }

// Size returns how many usable addresses the pool holds: the prefix's usable
// addresses minus those in excluded sub-ranges, saturating at math.MaxUint64
// for huge IPv6 prefixes. Used()+Free() == Size() whenever Size is below the
// saturation point.
func (p *Pool) Size() uint64 { return p.size().saturate64() }

func (p *Pool) size() u128 {
	// The usable range never spans all 2^128 values (the network address of
	// ::/0 is excluded), so the count cannot wrap to zero.
	usable := p.last.sub(p.first).inc()
	return usable.sub(p.excl.countWithin(p.first, p.last))
}

// Free returns how many usable addresses are still available, saturating at
// math.MaxUint64.
func (p *Pool) Free() uint64 {
	return p.size().sub(u128From64(p.Used())).saturate64()
}
