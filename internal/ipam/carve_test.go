package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

func TestCarveSubnetTakesHighestFree(t *testing.T) {
	p := netip.MustParsePrefix
	slice := p("10.200.3.0/24")
	nodeIP := netip.MustParseAddr("10.200.3.1")
	inUse := func(a netip.Addr) bool { return a == nodeIP }

	got, ok := CarveSubnet(slice, 28, nil, inUse)
	if !ok || got.String() != "10.200.3.240/28" {
		t.Errorf("first carve = %v, %v; want 10.200.3.240/28", got, ok)
	}
	// Taken subnets are skipped, whether equal, larger or smaller.
	got, _ = CarveSubnet(slice, 28, []netip.Prefix{p("10.200.3.240/28"), p("10.200.3.224/28"), p("10.200.3.192/27"), p("10.200.3.180/30")}, inUse)
	if got.String() != "10.200.3.160/28" {
		t.Errorf("carve past taken = %v, want 10.200.3.160/28", got)
	}
	// An in-use address anywhere in a candidate blocks it.
	busy := netip.MustParseAddr("10.200.3.250")
	got, _ = CarveSubnet(slice, 28, nil, func(a netip.Addr) bool { return a == nodeIP || a == busy })
	if got.String() != "10.200.3.224/28" {
		t.Errorf("carve past an in-use address = %v, want 10.200.3.224/28", got)
	}
	// Everything above the node IP's /28 taken: the only candidate left holds
	// the node IP, so nothing fits.
	if got, ok := CarveSubnet(slice, 28, []netip.Prefix{p("10.200.3.128/25"), p("10.200.3.16/28"), p("10.200.3.32/27"), p("10.200.3.64/26")}, inUse); ok {
		t.Errorf("carve with only the node IP's block left = %v, want none", got)
	}
	// A /28 slice cannot give a /28 (not more specific), nor hold a /28 beside its node IP.
	if got, ok := CarveSubnet(p("10.200.3.0/28"), 28, nil, inUse); ok {
		t.Errorf("carve /28 from a /28 = %v", got)
	}
	if got, ok := CarveSubnet(p("10.200.3.0/27"), 28, nil, inUse); !ok || got.String() != "10.200.3.16/28" {
		t.Errorf("carve /28 from a /27 = %v, %v; want 10.200.3.16/28", got, ok)
	}
	// Invalid sizes.
	for _, bits := range []int{24, 20, 33} {
		if got, ok := CarveSubnet(slice, bits, nil, nil); ok {
			t.Errorf("carve /%d from a /24 = %v", bits, got)
		}
	}
	// IPv6: the top /120 of a /64 slice.
	got, ok = CarveSubnet(p("fd00:200:0:7::/64"), 120, nil, func(a netip.Addr) bool { return a == netip.MustParseAddr("fd00:200:0:7::1") })
	if !ok || got.String() != "fd00:200:0:7:ffff:ffff:ffff:ff00/120" {
		t.Errorf("IPv6 carve = %v, %v", got, ok)
	}
	// A candidate too large to probe address by address is refused with
	// inUse, and fine without it.
	if _, ok := CarveSubnet(p("fd00:200:0:7::/64"), 96, nil, inUse); ok {
		t.Error("carving a /96 with an inUse probe should be refused (2^32 probes per candidate)")
	}
	if got, ok := CarveSubnet(p("fd00:200:0:7::/64"), 96, nil, nil); !ok || got.String() != "fd00:200:0:7:ffff:ffff::/96" {
		t.Errorf("carving a /96 without inUse = %v, %v", got, ok)
	}
}

func TestCarveSubnetJumpsOverLargeTaken(t *testing.T) {
	// Everything above the lowest /120 of a /64 is taken by blocks that halve
	// in size (the /65 upper half, then a /66, ... down to a /120): the walk
	// must jump over each, not step through 2^56 candidates.
	slice := netip.MustParsePrefix("fd00:200:0:7::/64")
	base, _ := prefixRange(slice)
	var taken []netip.Prefix
	for b := 65; b <= 120; b++ {
		start := base.add(u128{0, 1}.shl(uint(128 - b)))
		taken = append(taken, netip.PrefixFrom(start.addr(false), b))
	}
	got, ok := CarveSubnet(slice, 120, taken, nil)
	if !ok || got.String() != "fd00:200:0:7::/120" {
		t.Errorf("carve in an almost full /64 = %v, %v; want fd00:200:0:7::/120", got, ok)
	}
	pool := mustPool(t, slice.String())
	if got, err := pool.Carve(120, taken); err != nil || got.String() != "fd00:200:0:7::/120" {
		t.Errorf("Pool.Carve in an almost full /64 = %v, %v; want fd00:200:0:7::/120", got, err)
	}
}

func TestPoolCarve(t *testing.T) {
	pool := mustPool(t, "10.200.3.0/24")
	nodeIP, _ := pool.FirstUsable()
	if err := pool.AllocateSpecific(nodeIP); err != nil {
		t.Fatal(err)
	}
	var carved []netip.Prefix
	for _, want := range []string{"10.200.3.240/28", "10.200.3.224/28"} {
		sub, err := pool.Carve(28, nil)
		if err != nil || sub.String() != want {
			t.Fatalf("Carve = %v, %v; want %s", sub, err, want)
		}
		carved = append(carved, sub)
	}
	// Carved ranges are excluded from the pool and from later carves.
	if !pool.IsExcluded(netip.MustParseAddr("10.200.3.230")) {
		t.Error("carved subnet not excluded")
	}
	if err := pool.AllocateSpecific(netip.MustParseAddr("10.200.3.241")); !errors.Is(err, ErrExcluded) {
		t.Errorf("allocating inside a carved subnet: %v", err)
	}
	// Allocations and reservations block a candidate.
	if err := pool.AllocateSpecific(netip.MustParseAddr("10.200.3.222")); err != nil {
		t.Fatal(err)
	}
	if err := pool.Reserve(netip.MustParseAddr("10.200.3.200")); err != nil {
		t.Fatal(err)
	}
	sub, _ := pool.Carve(28, []netip.Prefix{netip.MustParsePrefix("10.200.3.176/28")})
	if sub.String() != "10.200.3.160/28" {
		t.Errorf("Carve past an allocation, a reservation and a taken /28 = %v, want 10.200.3.160/28", sub)
	}
	// Include gives the range back to allocation and carving.
	pool.Include(carved[0])
	if sub, _ := pool.Carve(28, nil); sub != carved[0] {
		t.Errorf("Carve after Include = %v, want %v back", sub, carved[0])
	}
	if _, err := pool.Carve(24, nil); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Carve(/24) from a /24: %v", err)
	}
	small := mustPool(t, "10.200.3.0/27")
	_ = small.AllocateSpecific(netip.MustParseAddr("10.200.3.1"))
	_ = small.AllocateSpecific(netip.MustParseAddr("10.200.3.17"))
	_, err := small.Carve(28, nil)
	wantErr(t, "Carve with every candidate busy", err, ErrExhausted, "no free /28 left in 10.200.3.0/27")
}
