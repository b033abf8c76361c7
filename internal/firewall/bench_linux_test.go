package firewall

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// largeSpec has n bridges and n disjoint container subnets (n ≤ 65536).
func largeSpec(n int) Spec {
	spec := Spec{
		OverlayIfaces: []string{"zl-overlay0"},
		Cluster:       []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Masquerade:    true,
		ClampMSS:      true,
	}
	for i := range n {
		spec.Bridges = append(spec.Bridges, fmt.Sprintf("zl-svc%04d-b", i))
		// One /28 per /24, so none merge.
		spec.Sources = append(spec.Sources, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 28))
	}
	return spec
}

// TestLargeSpecRoundTrips installs more elements than fit one netlink
// attribute (64 KiB) and one default-sized socket buffer (208 KiB), and
// reads them all back.
func TestLargeSpecRoundTrips(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t, "zltf-"+runID(t)+"-big")
	const n = 5000
	spec := largeSpec(n)
	if err := ns.fw().Apply(spec); err != nil {
		t.Fatalf("Apply with %d bridges and %d subnets: %v", n, n, err)
	}
	st, err := ns.fw().Inspect("")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Sets {
		if (s.Name == "bridges" || s.Name == "sources_v4") && s.Elements != n {
			t.Errorf("set %s has %d elements, want %d", s.Name, s.Elements, n)
		}
	}
	// nft, as an independent reader, sees every subnet and no open range.
	text := ns.exec(t, "nft", "list", "set", "inet", DefaultTable, "sources_v4")
	if got := strings.Count(text, "/28"); got != n || strings.Contains(text, "255.255.255.255") {
		t.Errorf("nft shows %d /28 subnets in sources_v4 (want %d); open range present: %v", got, n, strings.Contains(text, "255.255.255.255"))
	}
	if drift, err := ns.fw().Drifted(spec); err != nil || drift {
		t.Errorf("Drifted right after a large Apply = %v, %v", drift, err)
	}
}

// BenchmarkApply times one atomic rebuild of the whole table. n=200 is the
// reference size (200 bridges, 200 container subnets); the others show how
// the cost splits between the fixed part (hook unregistration when the old
// table goes) and the per-element part.
func BenchmarkApply(b *testing.B) {
	needRoot(b)
	ns := newNetNS(b, "zltf-"+runID(b)+"-bap")
	fw := ns.fw()
	for _, n := range []int{0, 200, 2000} {
		spec := largeSpec(n)
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			for b.Loop() {
				if err := fw.Apply(spec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDrifted200(b *testing.B) {
	needRoot(b)
	ns := newNetNS(b, "zltf-"+runID(b)+"-bdr")
	spec := largeSpec(200)
	fw := ns.fw()
	if err := fw.Apply(spec); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if drift, err := fw.Drifted(spec); err != nil || drift {
			b.Fatalf("Drifted = %v, %v", drift, err)
		}
	}
}
