package ipam

import (
	"errors"
	"hash/fnv"
	"net/netip"
	"strings"
	"testing"
)

var cluster4 = netip.MustParsePrefix("10.200.0.0/16")

func TestFNV1a64(t *testing.T) {
	if got := FNV1a64(); got != 0xcbf29ce484222325 {
		t.Errorf("FNV1a64() = %#x, want the offset basis", got)
	}
	for _, c := range []struct {
		parts [][]byte
		want  uint64
	}{
		{[][]byte{[]byte("leader")}, 0x9d24b27ac6ddeae4},
		{[][]byte{[]byte("web"), {0x1f}, []byte("0")}, 0x66accd2e098fe2ee},
		{[][]byte{[]byte("svc-a"), {0x1f}, []byte("node-1")}, 0x3e1b7c2951973672},
		{[][]byte{[]byte("sv"), []byte("c-a\x1fnode-1")}, 0x3e1b7c2951973672}, // parts are concatenated
	} {
		if got := FNV1a64(c.parts...); got != c.want {
			t.Errorf("FNV1a64(%q) = %#x, want %#x", c.parts, got, c.want)
		}
	}
	// Independent check against the standard library.
	for _, s := range []string{"", "a", "my-node-id", strings.Repeat("z", 300)} {
		h := fnv.New64a()
		h.Write([]byte(s))
		if got := FNV1a64([]byte(s)); got != h.Sum64() {
			t.Errorf("FNV1a64(%q) = %#x, hash/fnv says %#x", s, got, h.Sum64())
		}
	}
}

func TestPlacementVectors(t *testing.T) {
	for _, c := range []struct{ service, node, want string }{
		{"web", "0", "10.200.46.224/28"},
		{"web", "7", "10.200.128.112/28"},
		{"api", "0", "10.200.182.128/28"},
		{"svc-a", "node-1", "10.200.103.32/28"},
		{"svc-b", "node-1", "10.200.147.144/28"},
		{"svc-a", "node-2", "10.200.75.240/28"},
	} {
		got, err := PlaceServiceSubnet(cluster4, 28, c.service, c.node, nil)
		if err != nil || got.String() != c.want {
			t.Errorf("PlaceServiceSubnet(%q, %q) = %v, %v; want %s", c.service, c.node, got, err, c.want)
		}
	}
	for _, c := range []struct{ id, want string }{
		{"leader", "10.200.174.64/28"},
		{"node-a", "10.200.181.48/28"},
		{"node-b", "10.200.208.96/28"},
		{"my-node-id", "10.200.223.64/28"},
	} {
		got, err := PlaceNodeSlice(cluster4, 28, c.id, nil)
		if err != nil || got.String() != c.want {
			t.Errorf("PlaceNodeSlice(%q) = %v, %v; want %s", c.id, got, err, c.want)
		}
	}
	// The slice of "leader" at idx 2788 is derived from its hash.
	if idx := uint64(0x9d24b27ac6ddeae4) % 4096; idx != 2788 {
		t.Errorf("leader idx = %d", idx)
	}
}

// IPv6 vectors, computed independently (Python ipaddress + the same FNV-1a).
func TestPlacementVectorsIPv6(t *testing.T) {
	c6 := netip.MustParsePrefix("fd00:200::/48")
	for _, c := range []struct{ id, want string }{
		{"leader", "fd00:200:0:eae4::/64"},
		{"node-a", "fd00:200:0:cb53::/64"},
		{"node-b", "fd00:200:0:cd06::/64"},
	} {
		got, err := PlaceNodeSlice(c6, 64, c.id, nil)
		if err != nil || got.String() != c.want {
			t.Errorf("PlaceNodeSlice(%s, 64, %q) = %v, %v; want %s", c6, c.id, got, err, c.want)
		}
	}
	// /48 -> /120 has 2^72 slots: the count saturates at 2^64-1 as in the
	// reference, so the modulo is by 2^64-1, not 2^64.
	for _, c := range []struct{ cluster, service, node, want string }{
		{"fd00:200::/48", "web", "0", "fd00:200:0:66:accd:2e09:8fe2:ee00/120"},
		{"fd00:200::/48", "api", "0", "fd00:200:0:ce:f3be:a4d2:a57b:6800/120"},
		{"fd00:200::/48", "svc-a", "node-1", "fd00:200:0:3e:1b7c:2951:9736:7200/120"},
		{"fd00:200:0:1::/64", "web", "0", "fd00:200:0:1:accd:2e09:8fe2:ee00/120"},
		{"fd00:200:0:1::/64", "svc-a", "node-1", "fd00:200:0:1:1b7c:2951:9736:7200/120"},
	} {
		got, err := PlaceServiceSubnet(netip.MustParsePrefix(c.cluster), 120, c.service, c.node, nil)
		if err != nil || got.String() != c.want {
			t.Errorf("PlaceServiceSubnet(%s, 120, %q, %q) = %v, %v; want %s", c.cluster, c.service, c.node, got, err, c.want)
		}
	}
}

func TestPlacementProbesPastTaken(t *testing.T) {
	p := netip.MustParsePrefix
	// The hashed slot is taken: the next slot is used.
	got, _ := PlaceNodeSlice(cluster4, 28, "leader", []netip.Prefix{p("10.200.174.64/28")})
	if got.String() != "10.200.174.80/28" {
		t.Errorf("leader with its slot taken = %v, want 10.200.174.80/28", got)
	}
	// Overlap, not equality, blocks a slot: a /24 around the slot and a /30
	// inside the next one both count.
	got, _ = PlaceNodeSlice(cluster4, 28, "leader", []netip.Prefix{p("10.200.174.0/24"), p("10.200.175.4/30")})
	if got.String() != "10.200.175.16/28" {
		t.Errorf("leader past a /24 and a /30 = %v, want 10.200.175.16/28", got)
	}
	// A taken prefix larger than the cluster's tail wraps probing to slot 0.
	got, _ = PlaceServiceSubnet(cluster4, 28, "api", "0", []netip.Prefix{p("10.200.128.0/17"), p("10.200.0.0/28")})
	if got.String() != "10.200.0.16/28" {
		t.Errorf("api past the top half = %v, want 10.200.0.16/28 (wrapped)", got)
	}
	// Prefixes of the other family and invalid prefixes do not block.
	got, _ = PlaceNodeSlice(cluster4, 28, "leader", []netip.Prefix{p("::/0"), {}})
	if got.String() != "10.200.174.64/28" {
		t.Errorf("leader with only foreign prefixes taken = %v", got)
	}
	// IPv6: skip a taken /60 that covers the hashed /64 and fifteen after it.
	got, _ = PlaceNodeSlice(netip.MustParsePrefix("fd00:200::/48"), 64, "leader", []netip.Prefix{p("fd00:200:0:eae0::/60")})
	if got.String() != "fd00:200:0:eaf0::/64" {
		t.Errorf("IPv6 leader past a /60 = %v, want fd00:200:0:eaf0::/64", got)
	}
}

func TestPlacementExhausted(t *testing.T) {
	small := netip.MustParsePrefix("10.200.0.0/26")
	var taken []netip.Prefix
	for i := range 4 {
		got, err := PlaceNodeSlice(small, 28, "n"+string(rune('a'+i)), taken)
		if err != nil || Overlaps(got, taken) {
			t.Fatalf("placement %d = %v, %v with %v taken", i, got, err, taken)
		}
		taken = append(taken, got)
	}
	_, err := PlaceNodeSlice(small, 28, "one-too-many", taken)
	wantErr(t, "fifth /28 in a /26", err, ErrExhausted, "10.200.0.0/26", `node "one-too-many"`)
	_, err = PlaceServiceSubnet(cluster4, 28, "web", "0", []netip.Prefix{cluster4})
	wantErr(t, "cluster fully taken", err, ErrExhausted, "10.200.0.0/16", `service "web" on node "0"`)
	// A whole huge IPv6 space taken must not probe 2^64 slots one by one.
	c6 := netip.MustParsePrefix("fd00:200::/48")
	_, err = PlaceServiceSubnet(c6, 120, "web", "0", []netip.Prefix{netip.MustParsePrefix("fd00::/16")})
	wantErr(t, "IPv6 cluster fully taken", err, ErrExhausted)
	_, err = PlaceNodeSlice(cluster4, 16, "x", nil)
	wantErr(t, "slice bits == cluster bits", err, ErrOutOfRange, "must be more specific")
	_, err = PlaceServiceSubnet(cluster4, 33, "x", "y", nil)
	wantErr(t, "slice bits beyond /32", err, ErrOutOfRange, "exceeds")
}

// naivePlace is the reference's probing, one slot at a time, with the
// overlap rule. It is only usable on small clusters.
func naivePlace(cluster netip.Prefix, bits int, hash uint64, taken []netip.Prefix) (netip.Prefix, bool) {
	n := numSlices(cluster, bits)
	for i := range n {
		s := sliceAt(cluster, bits, (hash%n+i)%n)
		if !Overlaps(s, taken) {
			return s, true
		}
	}
	return netip.Prefix{}, false
}

// TestPlacementMatchesNaiveProbing checks that jumping over taken prefixes
// gives exactly what slot-by-slot probing gives, with random taken sets made
// of prefixes of every size, inside, around and outside the cluster.
func TestPlacementMatchesNaiveProbing(t *testing.T) {
	r := newRand(t)
	clusters := []netip.Prefix{netip.MustParsePrefix("10.200.0.0/22"), netip.MustParsePrefix("fd00:200::/116")}
	for iter := range 3000 {
		cluster := clusters[iter%2]
		bits := cluster.Bits() + 1 + r.IntN(6)
		var taken []netip.Prefix
		for range r.IntN(12) {
			tb := cluster.Bits() - 2 + r.IntN(maxBits(cluster)-cluster.Bits()+3)
			first, _ := prefixRange(cluster)
			a := first.add(u128From64(uint64(r.IntN(1 << (maxBits(cluster) - cluster.Bits() + 1))))) // may fall past the cluster
			taken = append(taken, netip.PrefixFrom(a.addr(cluster.Addr().Is4()), tb).Masked())
		}
		id := string(rune('a' + r.IntN(26)))
		want, wantOK := naivePlace(cluster, bits, FNV1a64([]byte(id)), taken)
		got, err := PlaceNodeSlice(cluster, bits, id, taken)
		if (err == nil) != wantOK || got != want {
			t.Fatalf("PlaceNodeSlice(%s, /%d, %q, %v) = %v, %v; slot-by-slot probing gives %v, %v", cluster, bits, id, taken, got, err, want, wantOK)
		}
		if wantOK && Overlaps(got, taken) {
			t.Fatalf("placed %v over taken %v", got, taken)
		}
		if !wantOK && !errors.Is(err, ErrExhausted) {
			t.Fatalf("exhaustion error %v", err)
		}
	}
}
