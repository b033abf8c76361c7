package ipam

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// FuzzParsePrefix feeds arbitrary strings through ParsePrefix and, when they
// parse, through everything the engine builds from a cluster CIDR. Nothing
// may panic, and what parses must be canonical.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{
		"10.200.0.0/16", "10.200.3.7/24", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.1/31",
		"fd00:200::/48", "fd00:200:0:7::99/64", "::/0", "::1/128", "::ffff:10.0.0.0/104",
		"", "/", "10.200.0.0", "10.200.0.0/", "10.200.0.0/33", "fe80::1%eth0/64", "1.2.3.4/08",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			if want := "invalid CIDR " + strconv.Quote(s) + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not start with %q", err, want)
			}
			if _, nerr := netip.ParsePrefix(s); nerr == nil {
				t.Fatalf("ParsePrefix(%q) failed (%v) but netip accepts it", s, err)
			}
			return
		}
		if !p.IsValid() || p != p.Masked() {
			t.Fatalf("ParsePrefix(%q) = %v, not a valid masked prefix", s, p)
		}
		if again, err := ParsePrefix(p.String()); err != nil || again != p {
			t.Fatalf("%v does not round-trip: %v, %v", p, again, err)
		}
		pool, err := NewPool(p)
		if err != nil {
			t.Fatalf("NewPool(%v): %v", p, err)
		}
		fu, ok := pool.FirstUsable()
		if a, err := pool.Allocate(); !ok || err != nil || a != fu || !p.Contains(a) {
			t.Fatalf("pool %v: FirstUsable %v,%v; Allocate %v,%v", p, fu, ok, a, err)
		}
		if pool.Size() == 0 || pool.Used() != 1 {
			t.Fatalf("pool %v: Size %d Used %d", p, pool.Size(), pool.Used())
		}
		if bits := DefaultServiceBits(p); p.Bits() < bits {
			sub, err := PlaceServiceSubnet(p, bits, s, "node", []netip.Prefix{p})
			if err == nil {
				t.Fatalf("placed %v although all of %v is taken", sub, p)
			}
			sub, err = PlaceServiceSubnet(p, bits, s, "node", nil)
			if err != nil || !p.Contains(sub.Addr()) || sub.Bits() != bits {
				t.Fatalf("PlaceServiceSubnet(%v, /%d) = %v, %v", p, bits, sub, err)
			}
			if c, ok := CarveSubnet(p, bits, []netip.Prefix{sub}, pool.IsAllocated); ok && (c.Overlaps(sub) || c.Contains(fu)) {
				t.Fatalf("CarveSubnet(%v) = %v overlaps %v or the first address", p, c, sub)
			}
		}
	})
}
