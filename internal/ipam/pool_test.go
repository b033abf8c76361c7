package ipam

import (
	"errors"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func mustPool(t testing.TB, s string) *Pool {
	t.Helper()
	p, err := NewPool(netip.MustParsePrefix(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// drain allocates until the pool reports an error and returns what it got.
func drain(t *testing.T, p *Pool) ([]netip.Addr, error) {
	t.Helper()
	var got []netip.Addr
	for range 1000 {
		a, err := p.Allocate()
		if err != nil {
			return got, err
		}
		got = append(got, a)
	}
	t.Fatalf("pool %s never ran out", p.Prefix())
	return nil, nil
}

func wantErr(t *testing.T, what string, err, kind error, fragments ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: error %v, want %v", what, err, kind)
		return
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("%s: error %q does not mention %q", what, err, f)
		}
	}
}

func TestPoolUsableAddresses(t *testing.T) {
	for _, c := range []struct {
		prefix string
		want   []netip.Addr
	}{
		{"10.200.3.0/29", addrs("10.200.3.1", "10.200.3.2", "10.200.3.3", "10.200.3.4", "10.200.3.5", "10.200.3.6")},
		{"10.200.3.4/30", addrs("10.200.3.5", "10.200.3.6")},
		{"10.200.3.4/31", addrs("10.200.3.4", "10.200.3.5")},
		{"10.200.3.4/32", addrs("10.200.3.4")},
		{"fd00::8/125", addrs("fd00::9", "fd00::a", "fd00::b", "fd00::c", "fd00::d", "fd00::e", "fd00::f")},
		{"fd00::4/126", addrs("fd00::5", "fd00::6", "fd00::7")},
		{"fd00::4/127", addrs("fd00::4", "fd00::5")},
		{"fd00::4/128", addrs("fd00::4")},
	} {
		t.Run(c.prefix, func(t *testing.T) {
			p := mustPool(t, c.prefix)
			if got := p.Size(); got != uint64(len(c.want)) {
				t.Errorf("Size() = %d, want %d", got, len(c.want))
			}
			got, err := drain(t, p)
			if !slices.Equal(got, c.want) {
				t.Errorf("handed out %v, want %v", got, c.want)
			}
			wantErr(t, "Allocate on a full pool", err, ErrExhausted, c.prefix)
			if p.Free() != 0 || p.Used() != p.Size() {
				t.Errorf("full pool: Used %d Free %d Size %d", p.Used(), p.Free(), p.Size())
			}
		})
	}
}

func TestPoolNeverHandsOutNetworkOrBroadcast(t *testing.T) {
	v4 := mustPool(t, "10.200.3.0/24")
	wantErr(t, "AllocateSpecific(network)", v4.AllocateSpecific(netip.MustParseAddr("10.200.3.0")), ErrReserved, "10.200.3.0 is the network address of 10.200.3.0/24")
	wantErr(t, "AllocateSpecific(broadcast)", v4.AllocateSpecific(netip.MustParseAddr("10.200.3.255")), ErrReserved, "broadcast")
	if !v4.IsReserved(netip.MustParseAddr("10.200.3.255")) || v4.IsAllocated(netip.MustParseAddr("10.200.3.255")) {
		t.Error("the broadcast address should read as reserved and not allocated")
	}
	if err := v4.AllocateSpecific(netip.MustParseAddr("10.200.3.254")); err != nil {
		t.Errorf("AllocateSpecific(last host): %v", err)
	}

	v6 := mustPool(t, "fd00:200::/64")
	wantErr(t, "AllocateSpecific(subnet-router anycast)", v6.AllocateSpecific(netip.MustParseAddr("fd00:200::")), ErrReserved, "subnet-router anycast")
	// IPv6 has no broadcast: the all-ones address is ordinary.
	if err := v6.AllocateSpecific(netip.MustParseAddr("fd00:200::ffff:ffff:ffff:ffff")); err != nil {
		t.Errorf("AllocateSpecific(all-ones IPv6): %v", err)
	}
}

func TestAllocateLowestFreeNotLIFO(t *testing.T) {
	p := mustPool(t, "10.200.3.0/24")
	for range 6 {
		if _, err := p.Allocate(); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{"10.200.3.2", "10.200.3.4"} {
		if err := p.Release(netip.MustParseAddr(s)); err != nil {
			t.Fatal(err)
		}
	}
	// The reference pops its release list, so it would return .4 first.
	for _, want := range []string{"10.200.3.2", "10.200.3.4", "10.200.3.7"} {
		got, err := p.Allocate()
		if err != nil || got.String() != want {
			t.Errorf("Allocate() = %v, %v; want %s", got, err, want)
		}
	}
}

func TestAllocateSpecificErrors(t *testing.T) {
	p := mustPool(t, "10.200.3.0/24")
	a := netip.MustParseAddr("10.200.3.9")
	if err := p.AllocateSpecific(a); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "twice", p.AllocateSpecific(a), ErrInUse, "10.200.3.9", "10.200.3.0/24")
	wantErr(t, "outside", p.AllocateSpecific(netip.MustParseAddr("10.200.4.1")), ErrOutOfRange, "10.200.4.1 is not in 10.200.3.0/24")
	wantErr(t, "IPv6 in IPv4 pool", p.AllocateSpecific(netip.MustParseAddr("fd00::1")), ErrFamily, "fd00::1 is IPv6 but pool 10.200.3.0/24 is IPv4")
	wantErr(t, "4in6 in IPv4 pool", p.AllocateSpecific(netip.MustParseAddr("::ffff:10.200.3.20")), ErrFamily)
	wantErr(t, "zero address", p.AllocateSpecific(netip.Addr{}), ErrOutOfRange, "invalid address")
	if err := p.Reserve(netip.MustParseAddr("10.200.3.1")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "reserved", p.AllocateSpecific(netip.MustParseAddr("10.200.3.1")), ErrReserved, "10.200.3.1 in 10.200.3.0/24 is reserved")
	if err := p.Exclude(netip.MustParsePrefix("10.200.3.240/28")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "excluded", p.AllocateSpecific(netip.MustParseAddr("10.200.3.241")), ErrExcluded, "10.200.3.241 lies in 10.200.3.240/28")

	v6 := mustPool(t, "fd00::/64")
	wantErr(t, "IPv4 in IPv6 pool", v6.AllocateSpecific(netip.MustParseAddr("10.0.0.1")), ErrFamily, "is IPv4 but pool fd00::/64 is IPv6")
}

func TestReleaseOnlyWhatWasHandedOut(t *testing.T) {
	p := mustPool(t, "10.200.3.0/24")
	gw := netip.MustParseAddr("10.200.3.1")
	if err := p.Reserve(gw); err != nil {
		t.Fatal(err)
	}
	a, err := p.Allocate()
	if err != nil || a.String() != "10.200.3.2" {
		t.Fatalf("Allocate() = %v, %v; want 10.200.3.2 (gateway reserved)", a, err)
	}
	wantErr(t, "never allocated", p.Release(netip.MustParseAddr("10.200.3.77")), ErrNotAllocated, "10.200.3.77 was never allocated from 10.200.3.0/24")
	wantErr(t, "gateway", p.Release(gw), ErrReserved, "10.200.3.1", "cannot be released")
	wantErr(t, "network", p.Release(netip.MustParseAddr("10.200.3.0")), ErrReserved, "network address")
	wantErr(t, "outside", p.Release(netip.MustParseAddr("10.200.9.9")), ErrOutOfRange, "10.200.9.9")
	wantErr(t, "other family", p.Release(netip.MustParseAddr("fd00::2")), ErrFamily)
	if err := p.Release(a); err != nil {
		t.Fatalf("Release(%s): %v", a, err)
	}
	wantErr(t, "double release", p.Release(a), ErrNotAllocated)
	// The refused releases must not have put anything into circulation.
	if got, _ := p.Allocate(); got != a {
		t.Errorf("after releases Allocate() = %v, want %v", got, a)
	}
	if p.IsAllocated(gw) || !p.IsReserved(gw) {
		t.Error("the gateway changed state after a refused release")
	}
}

func TestReserveUnreserve(t *testing.T) {
	p := mustPool(t, "fd00:200:0:7::/120")
	gw, _ := p.FirstUsable()
	if err := p.Reserve(gw); err != nil {
		t.Fatal(err)
	}
	if err := p.Reserve(gw); err != nil {
		t.Errorf("reserving twice: %v", err)
	}
	if p.Used() != 1 || len(p.Reserved()) != 1 {
		t.Errorf("after reserving twice: Used %d, Reserved %v", p.Used(), p.Reserved())
	}
	if got, _ := p.Allocate(); got.String() != "fd00:200:0:7::2" {
		t.Errorf("Allocate with gateway reserved = %v", got)
	}
	wantErr(t, "Reserve(allocated)", p.Reserve(netip.MustParseAddr("fd00:200:0:7::2")), ErrInUse)
	anycast := netip.MustParseAddr("fd00:200:0:7::")
	if err := p.Reserve(anycast); err != nil || !p.IsReserved(anycast) {
		t.Errorf("Reserve(subnet-router anycast) = %v, IsReserved %v; want a no-op that reads as reserved", err, p.IsReserved(anycast))
	}
	if p.Used() != 2 {
		t.Errorf("reserving the anycast address changed Used to %d", p.Used())
	}
	wantErr(t, "Unreserve(anycast)", p.Unreserve(anycast), ErrReserved, "stays reserved")
	wantErr(t, "Unreserve(never reserved)", p.Unreserve(netip.MustParseAddr("fd00:200:0:7::9")), ErrNotReserved, "fd00:200:0:7::9")
	wantErr(t, "Unreserve(outside)", p.Unreserve(netip.MustParseAddr("fd00:200:0:8::1")), ErrOutOfRange)
	wantErr(t, "Reserve(outside)", p.Reserve(netip.MustParseAddr("fd00:200:0:8::1")), ErrOutOfRange)
	if err := p.Unreserve(gw); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.Allocate(); got != gw {
		t.Errorf("after Unreserve, Allocate() = %v, want %v", got, gw)
	}
}

func TestExcludeInclude(t *testing.T) {
	p := mustPool(t, "10.200.3.0/24")
	low := netip.MustParsePrefix("10.200.3.0/28")
	if err := p.Exclude(low); err != nil {
		t.Fatal(err)
	}
	if err := p.Exclude(netip.MustParsePrefix("10.200.3.5/28")); err != nil {
		t.Errorf("excluding the same prefix (with host bits) again: %v", err)
	}
	if got := p.Excluded(); len(got) != 1 || got[0] != low {
		t.Errorf("Excluded() = %v", got)
	}
	if p.Size() != 254-15 {
		t.Errorf("Size() with .0/28 excluded = %d, want %d", p.Size(), 254-15)
	}
	first, _ := p.Allocate()
	if first.String() != "10.200.3.16" {
		t.Errorf("Allocate with .0/28 excluded = %v, want 10.200.3.16", first)
	}
	if !p.IsExcluded(netip.MustParseAddr("10.200.3.3")) || p.IsExcluded(first) {
		t.Error("IsExcluded disagrees with the exclusion")
	}
	wantErr(t, "exclude over an allocation", p.Exclude(netip.MustParsePrefix("10.200.3.16/29")), ErrInUse, "10.200.3.16/29", "10.200.3.16 is allocated")
	wantErr(t, "exclude over a larger allocation span", p.Exclude(netip.MustParsePrefix("10.200.3.16/32")), ErrInUse, "10.200.3.16 is allocated")
	if err := p.Reserve(netip.MustParseAddr("10.200.3.200")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "exclude over a reservation", p.Exclude(netip.MustParsePrefix("10.200.3.192/27")), ErrReserved, "10.200.3.200 is reserved")
	wantErr(t, "reserve inside an exclusion", p.Reserve(netip.MustParseAddr("10.200.3.4")), ErrExcluded)
	wantErr(t, "exclude outside", p.Exclude(netip.MustParsePrefix("10.200.4.0/28")), ErrOutOfRange, "not inside 10.200.3.0/24")
	wantErr(t, "exclude a supernet", p.Exclude(netip.MustParsePrefix("10.200.0.0/16")), ErrOutOfRange)
	wantErr(t, "exclude IPv6", p.Exclude(netip.MustParsePrefix("fd00::/120")), ErrFamily)
	wantErr(t, "exclude invalid", p.Exclude(netip.Prefix{}), ErrOutOfRange)
	if len(p.Excluded()) != 1 {
		t.Errorf("failed Excludes changed the exclusions: %v", p.Excluded())
	}

	// Nested exclusions: including the inner one leaves the outer in force.
	outer, inner := netip.MustParsePrefix("10.200.3.32/27"), netip.MustParsePrefix("10.200.3.48/28")
	for _, e := range []netip.Prefix{outer, inner} {
		if err := p.Exclude(e); err != nil {
			t.Fatal(err)
		}
	}
	p.Include(inner)
	if !p.IsExcluded(netip.MustParseAddr("10.200.3.50")) {
		t.Error("including the inner prefix freed addresses the outer one still excludes")
	}
	p.Include(netip.MustParsePrefix("10.200.3.128/25")) // never excluded: nothing happens
	p.Include(outer)
	p.Include(low)
	if p.Size() != 254 {
		t.Errorf("Size() after including everything = %d, want 254", p.Size())
	}
	if got, _ := p.Allocate(); got.String() != "10.200.3.1" {
		t.Errorf("Allocate after Include = %v, want 10.200.3.1", got)
	}
}

func TestPoolCounts(t *testing.T) {
	p := mustPool(t, "10.200.3.0/24")
	check := func(used, free, size uint64) {
		t.Helper()
		if p.Used() != used || p.Free() != free || p.Size() != size {
			t.Errorf("Used/Free/Size = %d/%d/%d, want %d/%d/%d", p.Used(), p.Free(), p.Size(), used, free, size)
		}
	}
	check(0, 254, 254)
	_ = p.Reserve(netip.MustParseAddr("10.200.3.1"))
	_, _ = p.Allocate()
	_, _ = p.Allocate()
	check(3, 251, 254)
	_ = p.Exclude(netip.MustParsePrefix("10.200.3.240/28")) // 15 usable: .240-.254
	check(3, 236, 239)

	for _, c := range []struct {
		prefix string
		size   uint64
	}{
		{"10.0.0.0/8", 1<<24 - 2},
		{"0.0.0.0/0", 1<<32 - 2},
		{"fd00::/65", 1<<63 - 1},
		{"fd00::/64", math.MaxUint64}, // 2^64-1 exactly, no saturation needed
		{"fd00::/48", math.MaxUint64}, // saturated
		{"::/0", math.MaxUint64},
	} {
		q := mustPool(t, c.prefix)
		if q.Size() != c.size || q.Free() != c.size || q.Used() != 0 {
			t.Errorf("%s: Size %d Free %d Used %d; want size %d", c.prefix, q.Size(), q.Free(), q.Used(), c.size)
		}
	}
	big := mustPool(t, "fd00::/64")
	_, _ = big.Allocate()
	if big.Free() != math.MaxUint64-1 {
		t.Errorf("/64 after one allocation: Free %d", big.Free())
	}
}

func TestAllocatedIsSorted(t *testing.T) {
	r := newRand(t)
	p := mustPool(t, "fd00:200::/64")
	var want []netip.Addr
	for range 200 {
		a := netip.AddrFrom16([16]byte{0xfd, 0x00, 0x02, 0x00, 8: byte(r.IntN(4)), 14: byte(r.IntN(256)), 15: byte(1 + r.IntN(255))})
		if p.AllocateSpecific(a) == nil {
			want = append(want, a)
		}
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if got := p.Allocated(); !slices.Equal(got, want) {
		t.Errorf("Allocated() = %v, want %v", got, want)
	}
}

func TestHugePrefixes(t *testing.T) {
	p := mustPool(t, "::/0")
	if a, _ := p.Allocate(); a.String() != "::1" {
		t.Errorf("first address of ::/0 = %v", a)
	}
	top := netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
	if err := p.AllocateSpecific(top); err != nil {
		t.Errorf("AllocateSpecific(top of ::/0): %v", err)
	}
	if err := p.Exclude(netip.MustParsePrefix("::/1")); err == nil {
		t.Error("excluding ::/1 over ::1 succeeded")
	}
	if err := p.Exclude(netip.MustParsePrefix("8000::/1")); err == nil {
		t.Error("excluding 8000::/1 over the top address succeeded")
	}
	if err := p.Release(top); err != nil {
		t.Fatal(err)
	}
	if err := p.Exclude(netip.MustParsePrefix("8000::/1")); err != nil {
		t.Fatal(err)
	}
	if p.Size() != math.MaxUint64 {
		t.Errorf("::/0 minus 8000::/1 should still saturate, got %d", p.Size())
	}
	v4 := mustPool(t, "0.0.0.0/0")
	if err := v4.AllocateSpecific(netip.MustParseAddr("255.255.255.254")); err != nil {
		t.Error(err)
	}
	wantErr(t, "255.255.255.255", v4.AllocateSpecific(netip.MustParseAddr("255.255.255.255")), ErrReserved, "broadcast")
}

func TestNewPool(t *testing.T) {
	if _, err := NewPool(netip.Prefix{}); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("NewPool(invalid) = %v, want ErrOutOfRange", err)
	}
	p := mustPool(t, "10.200.3.77/24")
	if p.Prefix().String() != "10.200.3.0/24" {
		t.Errorf("Prefix() = %s, want host bits masked", p.Prefix())
	}
}
