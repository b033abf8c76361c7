package ipam

import (
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
	"testing/quick"
)

func TestParsePrefix(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"10.200.0.0/16", "10.200.0.0/16"},
		{"10.200.3.7/24", "10.200.3.0/24"},
		{"10.200.3.7/32", "10.200.3.7/32"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"fd00:200::/48", "fd00:200::/48"},
		{"fd00:200:0:7::99/64", "fd00:200:0:7::/64"},
		{"FD00::1/128", "fd00::1/128"},
	} {
		got, err := ParsePrefix(c.in)
		if err != nil || got.String() != c.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "10.200.0.0", "10.200.0.0/33", "10.200.0.0/-1", "fd00::/129", "bogus/8", "10.200.0.0/16 ", "fe80::1%eth0/64", "10.0.0.0/255.0.0.0"} {
		_, err := ParsePrefix(in)
		if err == nil {
			t.Errorf("ParsePrefix(%q) succeeded", in)
			continue
		}
		if want := "invalid CIDR \"" + in + "\": "; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("ParsePrefix(%q) error %q does not start with %q", in, err, want)
		}
	}
}

func TestFirstUsable(t *testing.T) {
	for _, c := range []struct{ prefix, want string }{
		{"10.200.0.0/16", "10.200.0.1"},
		{"10.200.3.0/30", "10.200.3.1"},
		{"10.200.3.4/31", "10.200.3.4"},
		{"10.200.3.9/32", "10.200.3.9"},
		{"fd00:200::/64", "fd00:200::1"},
		{"fd00:200::4/126", "fd00:200::5"},
		{"fd00:200::4/127", "fd00:200::4"},
		{"fd00:200::5/128", "fd00:200::5"},
	} {
		p := netip.MustParsePrefix(c.prefix)
		got, ok := FirstUsable(p)
		if !ok || got.String() != c.want {
			t.Errorf("FirstUsable(%s) = %v, %v; want %s", p, got, ok, c.want)
		}
		pool, err := NewPool(p)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := pool.FirstUsable(); !ok || got.String() != c.want {
			t.Errorf("Pool(%s).FirstUsable() = %v, %v; want %s", p, got, ok, c.want)
		}
		if got, err := pool.Allocate(); err != nil || got.String() != c.want {
			t.Errorf("first Allocate from %s = %v, %v; want %s", p, got, err, c.want)
		}
	}
	if _, ok := FirstUsable(netip.Prefix{}); ok {
		t.Error("FirstUsable of the zero prefix reported ok")
	}
}

func TestNumSlicesAndSliceAt(t *testing.T) {
	v4 := netip.MustParsePrefix("10.200.0.0/16")
	v6 := netip.MustParsePrefix("fd00:200::/48")
	for _, c := range []struct {
		parent netip.Prefix
		bits   int
		want   uint64
	}{
		{v4, 28, 4096},
		{v4, 24, 256},
		{v4, 17, 2},
		{v4, 32, 65536},
		{v6, 64, 65536},
		{v6, 111, 1 << 63},
		{v6, 112, math.MaxUint64}, // 2^64 saturates like the reference
		{v6, 120, math.MaxUint64},
		{netip.MustParsePrefix("::/0"), 128, math.MaxUint64},
	} {
		got, err := NumSlices(c.parent, c.bits)
		if err != nil || got != c.want {
			t.Errorf("NumSlices(%s, %d) = %d, %v; want %d", c.parent, c.bits, got, err, c.want)
		}
	}
	for _, c := range []struct {
		parent netip.Prefix
		bits   int
		idx    uint64
		want   string
	}{
		{v4, 28, 0, "10.200.0.0/28"},
		{v4, 28, 750, "10.200.46.224/28"},
		{v4, 28, 4095, "10.200.255.240/28"},
		{v4, 24, 3, "10.200.3.0/24"},
		{v6, 64, 0xeae4, "fd00:200:0:eae4::/64"},
		{v6, 120, 0x66accd2e098fe2ee % math.MaxUint64, "fd00:200:0:66:accd:2e09:8fe2:ee00/120"},
		{netip.MustParsePrefix("10.200.9.9/16"), 28, 1, "10.200.0.16/28"}, // host bits of the parent ignored
	} {
		got, err := SliceAt(c.parent, c.bits, c.idx)
		if err != nil || got.String() != c.want {
			t.Errorf("SliceAt(%s, %d, %d) = %v, %v; want %s", c.parent, c.bits, c.idx, got, err, c.want)
		}
	}
	for _, c := range []struct {
		parent netip.Prefix
		bits   int
		msg    string
	}{
		{v4, 16, "slice prefix /16 must be more specific than 10.200.0.0/16"},
		{v4, 8, "must be more specific"},
		{v4, 33, "slice prefix /33 exceeds the address family maximum /32 of 10.200.0.0/16"},
		{v6, 129, "exceeds the address family maximum /128"},
		{netip.Prefix{}, 28, "invalid parent prefix"},
	} {
		if _, err := NumSlices(c.parent, c.bits); err == nil || !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("NumSlices(%s, %d) error = %v; want ErrOutOfRange containing %q", c.parent, c.bits, err, c.msg)
		}
		if _, err := SliceAt(c.parent, c.bits, 0); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("SliceAt(%s, %d) error = %v; want one containing %q", c.parent, c.bits, err, c.msg)
		}
	}
	if _, err := SliceAt(v4, 28, 4096); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("SliceAt past the last slice: %v, want ErrOutOfRange", err)
	}
}

// TestSliceAtProperties checks, for random parents and lengths, that slices
// are aligned, inside the parent, of the right length, and that consecutive
// indexes are adjacent.
func TestSliceAtProperties(t *testing.T) {
	prop := func(raw [16]byte, v6 bool, parentBits, extra uint8, idxSeed uint64) bool {
		var parent netip.Prefix
		if v6 {
			parent = netip.PrefixFrom(netip.AddrFrom16(raw), int(parentBits%128)).Masked()
		} else {
			parent = netip.PrefixFrom(netip.AddrFrom4([4]byte(raw[:4])), int(parentBits%32)).Masked()
		}
		room := maxBits(parent) - parent.Bits()
		bits := parent.Bits() + 1 + int(extra)%room
		n, err := NumSlices(parent, bits)
		if err != nil {
			t.Logf("NumSlices(%s, %d): %v", parent, bits, err)
			return false
		}
		idx := idxSeed % n
		s, err := SliceAt(parent, bits, idx)
		if err != nil || s.Bits() != bits || s.Masked() != s || !parent.Contains(s.Addr()) {
			t.Logf("SliceAt(%s, %d, %d) = %v, %v", parent, bits, idx, s, err)
			return false
		}
		if idx+1 < n {
			next, err := SliceAt(parent, bits, idx+1)
			_, last := prefixRange(s)
			if err != nil || u128FromAddr(next.Addr()) != last.inc() {
				t.Logf("slice %d of %s (/%d) = %v is not followed by %v", idx, parent, bits, s, next)
				return false
			}
		}
		return true
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 2000}); err != nil {
		t.Error(err)
	}
}

func TestDefaultBits(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.200.0.0/16"), netip.MustParsePrefix("fd00:200::/48")
	if DefaultServiceBits(v4) != 28 || DefaultSliceBits(v4) != 28 {
		t.Errorf("IPv4 defaults: service /%d, slice /%d; want /28, /28", DefaultServiceBits(v4), DefaultSliceBits(v4))
	}
	if DefaultServiceBits(v6) != 120 || DefaultSliceBits(v6) != 120 {
		t.Errorf("IPv6 defaults: service /%d, slice /%d; want /120, /120", DefaultServiceBits(v6), DefaultSliceBits(v6))
	}
}

func TestOverlaps(t *testing.T) {
	p := netip.MustParsePrefix
	a := p("10.200.3.0/24")
	for _, c := range []struct {
		others []netip.Prefix
		want   bool
	}{
		{nil, false},
		{[]netip.Prefix{p("10.200.4.0/24")}, false},
		{[]netip.Prefix{p("10.200.4.0/24"), p("10.200.3.240/28")}, true}, // inside
		{[]netip.Prefix{p("10.200.0.0/16")}, true},                       // contains
		{[]netip.Prefix{p("10.200.3.0/24")}, true},                       // equal
		{[]netip.Prefix{p("::a0c8:300/120")}, false},                     // other family
	} {
		if got := Overlaps(a, c.others); got != c.want {
			t.Errorf("Overlaps(%s, %v) = %v, want %v", a, c.others, got, c.want)
		}
	}
}
