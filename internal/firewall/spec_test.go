package firewall

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestNormalizeIsCanonical(t *testing.T) {
	a := Spec{
		OverlayIfaces: []string{"zl-overlay0", "zl-web-d"},
		Bridges:       []string{"zl-web-b", "zl-api-b", "zl-web-b"},
		Sources: []netip.Prefix{
			netip.MustParsePrefix("10.200.0.0/28"),
			netip.MustParsePrefix("10.200.0.5/32"),  // inside the /28
			netip.MustParsePrefix("10.200.0.16/28"), // adjacent to it
			netip.MustParsePrefix("fd00::1/64"),     // host bits set
		},
		Masquerade: true,
	}
	b := Spec{
		Table:         DefaultTable,
		OverlayIfaces: []string{"zl-web-d", "zl-overlay0"},
		Bridges:       []string{"zl-api-b", "zl-web-b"},
		Sources:       []netip.Prefix{netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("10.200.0.0/27")},
		Masquerade:    true,
	}
	da, err := a.normalize()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(da, db) {
		t.Fatalf("equivalent specs normalise differently:\n%+v\n%+v", da, db)
	}
	if want := []string{"zl-api-b", "zl-overlay0", "zl-web-b", "zl-web-d"}; !reflect.DeepEqual(da.clamp, want) {
		t.Errorf("clamp set = %q, want %q", da.clamp, want)
	}
	if want := []addrRange{{netip.MustParseAddr("10.200.0.0"), netip.MustParseAddr("10.200.0.31")}}; !reflect.DeepEqual(da.sources4, want) {
		t.Errorf("sources4 = %v, want %v", da.sources4, want)
	}
	c := b
	c.Masquerade = false
	if dc, _ := c.normalize(); reflect.DeepEqual(dc, db) {
		t.Error("turning masquerade off did not change the normalised spec")
	}
}

// A dedicated device reaches its own bridge only; the global device every
// bridge; every bridge itself. Duplicates and order do not matter.
func TestNormalizePaths(t *testing.T) {
	spec := Spec{
		OverlayIfaces: []string{"zl-g", "zl-web-d", "zl-g"},
		Bridges:       []string{"zl-web-b", "zl-api-b"},
		Dedicated:     []Dedicated{{"zl-web-d", "zl-web-b"}, {"zl-web-d", "zl-web-b"}},
		DNS:           []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:53"), netip.MustParseAddrPort("10.0.0.1:53"), netip.MustParseAddrPort("10.0.0.1:53")},
	}
	d, err := spec.normalize()
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]string{{"zl-api-b", "zl-api-b"}, {"zl-g", "zl-api-b"}, {"zl-g", "zl-web-b"}, {"zl-web-b", "zl-web-b"}, {"zl-web-d", "zl-web-b"}}
	if !reflect.DeepEqual(d.paths, want) {
		t.Errorf("paths = %q, want %q", d.paths, want)
	}
	if !reflect.DeepEqual(d.global, []string{"zl-g"}) {
		t.Errorf("global = %q, want [zl-g]", d.global)
	}
	if len(d.dns4) != 1 || len(d.dns6) != 1 {
		t.Errorf("DNS listeners split into %v and %v", d.dns4, d.dns6)
	}
}

func TestNormalizeRejectsBadInput(t *testing.T) {
	long := strings.Repeat("x", 16)
	for _, tc := range []struct {
		name string
		spec Spec
		want string
	}{
		{"table starts with digit", Spec{Table: "1abc"}, "must start with a letter"},
		{"table with space", Spec{Table: "a b"}, "may contain only"},
		{"table too long", Spec{Table: strings.Repeat("t", 65)}, "longer than 64"},
		{"empty ifname", Spec{Bridges: []string{""}}, "Spec.Bridges entry \"\" is empty"},
		{"long ifname", Spec{OverlayIfaces: []string{long}}, "at most 15"},
		{"ifname with slash", Spec{Bridges: []string{"zl/x"}}, "cannot"},
		{"ifname dot", Spec{Bridges: []string{"."}}, "not a valid interface name"},
		{"device in both lists", Spec{Bridges: []string{"zl-x"}, OverlayIfaces: []string{"zl-x"}}, "both as an overlay device and as a bridge"},
		{"zero prefix", Spec{Sources: []netip.Prefix{{}}}, "invalid prefix"},
		{"mapped prefix", Spec{Cluster: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}}, "IPv4 form"},
		{"dedicated device not an overlay device", Spec{Bridges: []string{"zl-b"}, Dedicated: []Dedicated{{"zl-d", "zl-b"}}}, `device "zl-d" is not in Spec.OverlayIfaces`},
		{"dedicated bridge unknown", Spec{OverlayIfaces: []string{"zl-d"}, Dedicated: []Dedicated{{"zl-d", "zl-b"}}}, `bridge "zl-b" (of device "zl-d") is not in Spec.Bridges`},
		{"dedicated device with two bridges", Spec{OverlayIfaces: []string{"zl-d"}, Bridges: []string{"zl-a", "zl-b"},
			Dedicated: []Dedicated{{"zl-d", "zl-a"}, {"zl-d", "zl-b"}}}, "two bridges"},
		{"container link prefix too long", Spec{ContainerLinks: long}, "Spec.ContainerLinks"},
		{"container link prefix with space", Spec{ContainerLinks: "zl v"}, "Spec.ContainerLinks"},
		{"DNS listener without address", Spec{DNS: []netip.AddrPort{netip.AddrPortFrom(netip.IPv4Unspecified(), 53)}}, "has no address"},
		{"DNS listener without port", Spec{DNS: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:0")}}, "port 0"},
		{"DNS listener mapped", Spec{DNS: []netip.AddrPort{netip.MustParseAddrPort("[::ffff:10.0.0.1]:53")}}, "IPv4 form"},
		{"DNS listener with zone", Spec{DNS: []netip.AddrPort{netip.MustParseAddrPort("[fe80::1%eth0]:53")}}, "zone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.spec.normalize()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("normalize() error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestMergePrefixesMatchesMembership compares the merged ranges with the
// original prefixes address by address over a small space, for many
// random prefix sets: same membership, and ranges sorted, disjoint and
// not touching (the kernel rejects overlapping interval elements).
func TestMergePrefixesMatchesMembership(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := netip.MustParseAddr("10.0.0.0") // space: 10.0.0.0/22
	for round := range 500 {
		var prefixes []netip.Prefix
		for range rng.IntN(8) {
			bits := 22 + rng.IntN(11)
			off := rng.IntN(1 << 10)
			a := base
			for range off {
				a = a.Next()
			}
			prefixes = append(prefixes, netip.PrefixFrom(a, bits).Masked())
		}
		ranges := mergePrefixes(prefixes)
		for i := 1; i < len(ranges); i++ {
			if ranges[i-1].last.Next().Compare(ranges[i].first) >= 0 {
				t.Fatalf("round %d: ranges %v and %v overlap or touch (from %v)", round, ranges[i-1], ranges[i], prefixes)
			}
		}
		a := base
		for range 1 << 10 {
			inPrefix := false
			for _, p := range prefixes {
				inPrefix = inPrefix || p.Contains(a)
			}
			inRange := false
			for _, r := range ranges {
				inRange = inRange || r.first.Compare(a) <= 0 && a.Compare(r.last) <= 0
			}
			if inPrefix != inRange {
				t.Fatalf("round %d: %s in prefixes %v = %v but in ranges %v = %v", round, a, prefixes, inPrefix, ranges, inRange)
			}
			a = a.Next()
		}
	}
}

func TestMergePrefixesEdges(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{nil, "[]"},
		{[]string{"0.0.0.0/0", "10.0.0.0/8"}, "[0.0.0.0-255.255.255.255]"},
		{[]string{"255.255.255.0/24", "255.255.254.0/24"}, "[255.255.254.0-255.255.255.255]"},
		{[]string{"::/0"}, "[::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]"},
		{[]string{"fd00::/64", "fd00:0:0:1::/64", "fd00:0:0:3::/64"}, "[fd00::-fd00::1:ffff:ffff:ffff:ffff fd00:0:0:3::-fd00::3:ffff:ffff:ffff:ffff]"},
		{[]string{"10.0.0.7/32", "10.0.0.7/32"}, "[10.0.0.7-10.0.0.7]"},
	} {
		var ps []netip.Prefix
		for _, s := range tc.in {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		var got []string
		for _, r := range mergePrefixes(ps) {
			got = append(got, r.first.String()+"-"+r.last.String())
		}
		if s := fmt.Sprint(got); s != tc.want {
			t.Errorf("mergePrefixes(%v) = %s, want %s", tc.in, s, tc.want)
		}
	}
}

func TestForeignHints(t *testing.T) {
	if h := (Foreign{}).Hints(); len(h) != 0 {
		t.Errorf("no findings gave hints %q", h)
	}
	docker := Foreign{DockerChains: []string{"ip filter DOCKER-USER"}, DropForwardChains: []string{"ip filter FORWARD"}}
	if h := strings.Join(docker.Hints(), "\n"); !strings.Contains(h, "DOCKER-USER") || !strings.Contains(h, "ip filter FORWARD") {
		t.Errorf("Docker with FORWARD drop: hints %q lack the DOCKER-USER advice", h)
	}
	legacy := Foreign{LegacyIPTables: []string{"ip filter"}}
	if h := strings.Join(legacy.Hints(), "\n"); !strings.Contains(h, "iptables-legacy") {
		t.Errorf("legacy tables: hints %q", h)
	}
	if !docker.Any() || (Foreign{}).Any() {
		t.Error("Any() disagrees with the findings")
	}
}
