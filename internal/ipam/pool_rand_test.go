package ipam

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// poolModel is the obviously-correct reference a Pool is checked against:
// plain sets, and brute force wherever the prefix is small enough.
type poolModel struct {
	prefix   netip.Prefix
	alloc    map[netip.Addr]bool
	resv     map[netip.Addr]bool
	excluded []netip.Prefix
	carved   []netip.Prefix
}

// lastAddr sets every host bit, independently of the package's arithmetic.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (m *poolModel) small() bool { return m.prefix.Addr().BitLen()-m.prefix.Bits() <= 10 }

func (m *poolModel) usable(a netip.Addr) bool {
	host := a.BitLen() - m.prefix.Bits()
	switch {
	case host < 2:
		return true
	case a == m.prefix.Addr():
		return false
	case a.Is4() && a == lastAddr(m.prefix):
		return false
	}
	return true
}

func (m *poolModel) isExcluded(a netip.Addr) bool {
	return slices.ContainsFunc(m.excluded, func(e netip.Prefix) bool { return e.Contains(a) })
}

func (m *poolModel) free(a netip.Addr) bool {
	return m.prefix.Contains(a) && m.usable(a) && !m.alloc[a] && !m.resv[a] && !m.isExcluded(a)
}

// lowestFree walks up from the network address; the walk is bounded by the
// number of blocked addresses, which the generator keeps small.
func (m *poolModel) lowestFree() (netip.Addr, bool) {
	for a := m.prefix.Addr(); a.IsValid() && m.prefix.Contains(a); a = a.Next() {
		if m.free(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (m *poolModel) rangeErr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return ErrOutOfRange
	case a.Is4() != m.prefix.Addr().Is4():
		return ErrFamily
	case !m.prefix.Contains(a):
		return ErrOutOfRange
	}
	return nil
}

func (m *poolModel) allocateSpecificErr(a netip.Addr) error {
	if err := m.rangeErr(a); err != nil {
		return err
	}
	switch {
	case !m.usable(a):
		return ErrReserved
	case m.alloc[a]:
		return ErrInUse
	case m.resv[a]:
		return ErrReserved
	case m.isExcluded(a):
		return ErrExcluded
	}
	return nil
}

// each calls f for every address of sub, for small prefixes only.
func each(sub netip.Prefix, f func(netip.Addr)) {
	for a := sub.Masked().Addr(); a.IsValid() && sub.Contains(a); a = a.Next() {
		f(a)
	}
}

func (m *poolModel) holds(sub netip.Prefix, set map[netip.Addr]bool) bool {
	for a := range set {
		if sub.Contains(a) {
			return true
		}
	}
	return false
}

// randAddr picks an address likely to interact with the pool's state: inside
// the prefix (near its ends for big prefixes), just outside it, of the other
// family, a live allocation or a reservation.
func (m *poolModel) randAddr(r *rand.Rand) netip.Addr {
	first, last := m.prefix.Addr(), lastAddr(m.prefix)
	switch r.IntN(20) {
	case 0:
		if first.Is4() {
			return netip.MustParseAddr("fd00::1")
		}
		return netip.MustParseAddr("10.0.0.1")
	case 1:
		if p := first.Prev(); p.IsValid() {
			return p
		}
	case 2:
		if n := last.Next(); n.IsValid() {
			return n
		}
	case 3, 4:
		if len(m.alloc) > 0 {
			return slices.Collect(maps.Keys(m.alloc))[r.IntN(len(m.alloc))]
		}
	case 5:
		if len(m.resv) > 0 {
			return slices.Collect(maps.Keys(m.resv))[r.IntN(len(m.resv))]
		}
	}
	base, top := u128FromAddr(first), u128FromAddr(last)
	span := top.sub(base)
	if span.less(u128From64(4096)) {
		return base.add(u128From64(r.Uint64N(span.lo + 1))).addr(first.Is4())
	}
	if r.IntN(2) == 0 {
		return base.add(u128From64(r.Uint64N(1024))).addr(first.Is4())
	}
	return top.sub(u128From64(r.Uint64N(1024))).addr(first.Is4())
}

func (m *poolModel) randSub(r *rand.Rand) netip.Prefix {
	maxb := m.prefix.Addr().BitLen()
	lo := max(m.prefix.Bits(), maxb-8) // at most 256 addresses, so the model can walk them
	return netip.PrefixFrom(m.randAddr(r), lo+r.IntN(maxb-lo+1)).Masked()
}

// expectCarve brute-forces the highest free candidate for small prefixes.
func (m *poolModel) expectCarve(bits int) (netip.Prefix, bool) {
	n := numSlices(m.prefix, bits)
	for i := n; i > 0; i-- {
		c := sliceAt(m.prefix, bits, i-1)
		if !m.blocksCarve(c) {
			return c, true
		}
	}
	return netip.Prefix{}, false
}

func (m *poolModel) blocksCarve(c netip.Prefix) bool {
	return Overlaps(c, m.excluded) || m.holds(c, m.alloc) || m.holds(c, m.resv)
}

func sortedKeys(set map[netip.Addr]bool) []netip.Addr {
	return slices.SortedFunc(maps.Keys(set), netip.Addr.Compare)
}

// check compares every observable of the pool with the model.
func (m *poolModel) check(p *Pool, r *rand.Rand) error {
	if got, want := p.Allocated(), sortedKeys(m.alloc); !slices.Equal(got, want) {
		return fmt.Errorf("Allocated() = %v, model %v", got, want)
	}
	if got, want := p.Reserved(), sortedKeys(m.resv); !slices.Equal(got, want) {
		return fmt.Errorf("Reserved() = %v, model %v", got, want)
	}
	for a := range m.alloc {
		if m.resv[a] || m.isExcluded(a) || !m.usable(a) {
			return fmt.Errorf("allocated %s is also reserved, excluded or unusable", a)
		}
	}
	for a := range m.resv {
		if m.isExcluded(a) {
			return fmt.Errorf("reserved %s lies in an excluded range", a)
		}
	}
	// Carved subnets are excluded, so the loops above also prove that no
	// carved subnet holds a live address.
	for i, c := range m.carved {
		if !slices.Contains(m.excluded, c) {
			return fmt.Errorf("carved %s is not excluded", c)
		}
		if Overlaps(c, m.carved[i+1:]) {
			return fmt.Errorf("carved %s overlaps another carved subnet in %v", c, m.carved)
		}
	}
	if p.Used()+p.Free() != p.Size() {
		// Only a saturated Size may break the identity, and then Free must
		// saturate too: the generator never uses anywhere near 2^64 addresses.
		if p.Size() != math.MaxUint64 || p.Free() != math.MaxUint64 {
			return fmt.Errorf("Used %d + Free %d != Size %d", p.Used(), p.Free(), p.Size())
		}
	}
	if p.Used() != uint64(len(m.alloc)+len(m.resv)) {
		return fmt.Errorf("Used() = %d, model %d", p.Used(), len(m.alloc)+len(m.resv))
	}
	if m.small() {
		var size, free uint64
		each(m.prefix, func(a netip.Addr) {
			if m.usable(a) && !m.isExcluded(a) {
				size++
			}
			if m.free(a) {
				free++
			}
		})
		if p.Size() != size || p.Free() != free {
			return fmt.Errorf("Size/Free = %d/%d, brute force %d/%d", p.Size(), p.Free(), size, free)
		}
	}
	for range 8 {
		a := m.randAddr(r)
		if p.IsAllocated(a) != m.alloc[a] ||
			p.IsReserved(a) != (m.rangeErr(a) == nil && (m.resv[a] || !m.usable(a))) ||
			p.IsExcluded(a) != (m.rangeErr(a) == nil && m.isExcluded(a)) {
			return fmt.Errorf("state of %s: allocated %v reserved %v excluded %v disagrees with the model",
				a, p.IsAllocated(a), p.IsReserved(a), p.IsExcluded(a))
		}
	}
	return nil
}

// restore rebuilds a pool from the model's live set, in random order, the
// way the engine rebuilds pools from the store after a restart.
func (m *poolModel) restore(r *rand.Rand) (*Pool, error) {
	p, err := NewPool(m.prefix)
	if err != nil {
		return nil, err
	}
	for _, a := range sortedKeys(m.resv) {
		if err := p.Reserve(a); err != nil {
			return nil, fmt.Errorf("restore Reserve(%s): %w", a, err)
		}
	}
	for _, e := range m.excluded {
		if err := p.Exclude(e); err != nil {
			return nil, fmt.Errorf("restore Exclude(%s): %w", e, err)
		}
	}
	live := sortedKeys(m.alloc)
	r.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	for _, a := range live {
		if err := p.AllocateSpecific(a); err != nil {
			return nil, fmt.Errorf("restore AllocateSpecific(%s): %w", a, err)
		}
	}
	return p, nil
}

func errKind(err error) error {
	for _, k := range []error{ErrExhausted, ErrOutOfRange, ErrInUse, ErrNotAllocated, ErrReserved, ErrNotReserved, ErrExcluded, ErrFamily} {
		if errors.Is(err, k) {
			return k
		}
	}
	return err
}

// step applies one random operation to both pool and model.
func (m *poolModel) step(t *testing.T, p *Pool, r *rand.Rand) *Pool {
	t.Helper()
	expect := func(op string, got, want error) {
		t.Helper()
		if errKind(got) != want {
			t.Fatalf("%s on %s: error %v, model expects %v", op, m.prefix, got, want)
		}
	}
	switch op := r.IntN(100); {
	case op < 30:
		want, ok := m.lowestFree()
		got, err := p.Allocate()
		if !ok {
			expect("Allocate", err, ErrExhausted)
			return p
		}
		if err != nil || got != want {
			t.Fatalf("Allocate on %s = %v, %v; model's lowest free is %s", m.prefix, got, err, want)
		}
		if m.alloc[got] {
			t.Fatalf("Allocate handed out %s twice", got)
		}
		m.alloc[got] = true
	case op < 42:
		a := m.randAddr(r)
		want := m.allocateSpecificErr(a)
		expect(fmt.Sprintf("AllocateSpecific(%s)", a), p.AllocateSpecific(a), want)
		if want == nil {
			m.alloc[a] = true
		}
	case op < 60:
		a := m.randAddr(r)
		want := m.rangeErr(a)
		if want == nil {
			switch {
			case m.alloc[a]:
			case !m.usable(a), m.resv[a]:
				want = ErrReserved
			default:
				want = ErrNotAllocated
			}
		}
		expect(fmt.Sprintf("Release(%s)", a), p.Release(a), want)
		if want == nil {
			delete(m.alloc, a)
		}
	case op < 66:
		a := m.randAddr(r)
		want := m.rangeErr(a)
		if want == nil && m.usable(a) && !m.resv[a] {
			switch {
			case m.alloc[a]:
				want = ErrInUse
			case m.isExcluded(a):
				want = ErrExcluded
			}
		}
		expect(fmt.Sprintf("Reserve(%s)", a), p.Reserve(a), want)
		if want == nil && m.usable(a) {
			m.resv[a] = true
		}
	case op < 70:
		a := m.randAddr(r)
		want := m.rangeErr(a)
		if want == nil {
			switch {
			case !m.usable(a):
				want = ErrReserved
			case !m.resv[a]:
				want = ErrNotReserved
			}
		}
		expect(fmt.Sprintf("Unreserve(%s)", a), p.Unreserve(a), want)
		if want == nil {
			delete(m.resv, a)
		}
	case op < 78:
		sub := m.randSub(r)
		var want error
		switch {
		case sub.Addr().Is4() != m.prefix.Addr().Is4():
			want = ErrFamily
		case !m.prefix.Contains(sub.Addr()) || sub.Bits() < m.prefix.Bits():
			want = ErrOutOfRange
		case slices.Contains(m.excluded, sub):
		case m.holds(sub, m.alloc):
			want = ErrInUse
		case m.holds(sub, m.resv):
			want = ErrReserved
		}
		expect(fmt.Sprintf("Exclude(%s)", sub), p.Exclude(sub), want)
		if want == nil && !slices.Contains(m.excluded, sub) {
			m.excluded = append(m.excluded, sub)
		}
	case op < 84:
		if len(m.excluded) == 0 {
			return p
		}
		i := r.IntN(len(m.excluded))
		p.Include(m.excluded[i])
		m.carved = slices.DeleteFunc(m.carved, func(c netip.Prefix) bool { return c == m.excluded[i] })
		m.excluded = slices.Delete(m.excluded, i, i+1)
	case op < 96:
		maxb := m.prefix.Addr().BitLen()
		if m.prefix.Bits() >= maxb {
			return p
		}
		bits := max(m.prefix.Bits()+1, maxb-8) + r.IntN(min(maxb-m.prefix.Bits(), 8))
		bits = min(bits, maxb)
		// The engine's probe: the pool's live addresses. (IsReserved would
		// also report the network and broadcast addresses, which a service
		// subnet may share with its slice.)
		reserved := map[netip.Addr]bool{}
		for _, a := range p.Reserved() {
			reserved[a] = true
		}
		inUse := func(a netip.Addr) bool { return p.IsAllocated(a) || reserved[a] }
		got, ok := CarveSubnet(m.prefix, bits, m.excluded, inUse)
		if m.small() {
			want, wantOK := m.expectCarve(bits)
			if got != want || ok != wantOK {
				t.Fatalf("CarveSubnet(%s, /%d) = %v, %v; brute force says %v, %v", m.prefix, bits, got, ok, want, wantOK)
			}
		} else if ok {
			if m.blocksCarve(got) {
				t.Fatalf("CarveSubnet(%s, /%d) = %v, which is blocked", m.prefix, bits, got)
			}
			if lastAddr(got) != lastAddr(m.prefix) {
				above := netip.PrefixFrom(lastAddr(got).Next(), bits)
				if !m.blocksCarve(above) {
					t.Fatalf("CarveSubnet(%s, /%d) = %v, but %v above it is free", m.prefix, bits, got, above)
				}
			}
		}
		if !ok {
			_, err := p.Carve(bits, nil)
			expect("Pool.Carve", err, ErrExhausted)
			return p
		}
		if r.IntN(2) == 0 {
			if err := p.Exclude(got); err != nil {
				t.Fatalf("Exclude(%s) of a carved subnet: %v", got, err)
			}
		} else if pc, err := p.Carve(bits, nil); err != nil || pc != got {
			t.Fatalf("Pool.Carve(/%d) = %v, %v; CarveSubnet gave %v", bits, pc, err, got)
		}
		m.excluded = append(m.excluded, got)
		m.carved = append(m.carved, got)
	default:
		np, err := m.restore(r)
		if err != nil {
			t.Fatal(err)
		}
		return np
	}
	return p
}

// TestPoolProperties runs random operation sequences against the model on
// prefixes of every interesting size and family. Across allocate,
// allocate-specific, release, reserve, unreserve, exclude, include, carve and
// restore: no address is held twice, nothing is handed out from an excluded
// or reserved range, carved subnets never overlap each other or live
// addresses, and Used()+Free() == Size().
func TestPoolProperties(t *testing.T) {
	r := newRand(t)
	prefixes := []string{
		"10.200.3.0/24", "10.200.3.0/27", "10.200.3.4/30", "10.200.3.4/31", "10.200.3.4/32",
		"fd00:200::/120", "fd00:200::/125", "fd00:200::4/127", "fd00:200::4/128",
		"fd00:200:0:7::/64", "10.200.0.0/16", "0.0.0.0/0", "::/0",
	}
	steps := 400
	if testing.Short() {
		steps = 100
	}
	for _, s := range prefixes {
		t.Run(s, func(t *testing.T) {
			for round := range 3 {
				m := &poolModel{prefix: netip.MustParsePrefix(s), alloc: map[netip.Addr]bool{}, resv: map[netip.Addr]bool{}}
				p, err := NewPool(m.prefix)
				if err != nil {
					t.Fatal(err)
				}
				for i := range steps {
					p = m.step(t, p, r)
					if err := m.check(p, r); err != nil {
						t.Fatalf("round %d step %d: %v", round, i, err)
					}
				}
			}
		})
	}
}
