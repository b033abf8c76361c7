package darwinnet

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestOwnRoutes(t *testing.T) {
	const idx = 14
	static := rtfUp | rtfStatic
	rib := []ribRoute{
		{idx, static, netip.MustParsePrefix("10.201.0.0/16"), netip.Addr{}},                                   // a peer's subnet: ours
		{idx, static | rtfHost, netip.MustParsePrefix("10.202.0.9/32"), netip.Addr{}},                         // host route: ours
		{idx, static | rtfGateway, netip.MustParsePrefix("10.203.0.0/16"), netip.MustParseAddr("10.200.0.9")}, // via a gateway
		{idx, static, netip.MustParsePrefix("10.200.0.0/16"), netip.Addr{}},                                   // the address's own prefix
		{idx, rtfUp | rtfHost, netip.MustParsePrefix("10.200.0.1/32"), netip.Addr{}},                          // kernel's p2p host route
		{idx, static | rtfWasCloned, netip.MustParsePrefix("10.204.0.1/32"), netip.Addr{}},                    // cloned
		{idx, rtfUp, netip.MustParsePrefix("10.205.0.0/16"), netip.Addr{}},                                    // not static
		{idx, static | rtfMulticast, netip.MustParsePrefix("224.0.0.0/4"), netip.Addr{}},
		{idx, rtfStatic, netip.MustParsePrefix("10.206.0.0/16"), netip.Addr{}},  // down
		{idx + 1, static, netip.MustParsePrefix("10.207.0.0/16"), netip.Addr{}}, // other interface
		{idx, static, netip.MustParsePrefix("fd00:1::/64"), netip.Addr{}},
	}
	got := ownRoutes(rib, idx, "zl-prod-g", pfx("10.200.0.1/16"))
	want := []linuxnet.Route{
		{Dst: netip.MustParsePrefix("10.201.0.0/16"), Dev: "zl-prod-g", Scope: linuxnet.ScopeLink},
		{Dst: netip.MustParsePrefix("10.202.0.9/32"), Dev: "zl-prod-g", Scope: linuxnet.ScopeLink},
		{Dst: netip.MustParsePrefix("10.203.0.0/16"), Dev: "zl-prod-g", Via: netip.MustParseAddr("10.200.0.9"), Scope: linuxnet.ScopeUniverse},
		{Dst: netip.MustParsePrefix("fd00:1::/64"), Dev: "zl-prod-g", Scope: linuxnet.ScopeLink},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ownRoutes:\n got %v\nwant %v", got, want)
	}
}

func TestMaskBits(t *testing.T) {
	for _, c := range []struct {
		m    []byte
		bits int
		ok   bool
	}{
		{[]byte{255, 255, 0, 0}, 16, true},
		{[]byte{255, 255, 255, 240}, 28, true},
		{[]byte{}, 0, true},
		{[]byte{255, 255}, 16, true}, // the kernel trims trailing zero bytes
		{[]byte{255, 0, 255, 0}, 0, false},
		{[]byte{0xfe, 0x01}, 0, false},
		{[]byte{255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0}, 64, true},
	} {
		bits, ok := maskBits(c.m)
		if bits != c.bits || ok != c.ok {
			t.Errorf("maskBits(%x) = %d, %v; want %d, %v", c.m, bits, ok, c.bits, c.ok)
		}
	}
}

func TestRouteFlagsAndChecks(t *testing.T) {
	r := linuxnet.Route{Dst: netip.MustParsePrefix("10.201.0.0/16"), Dev: "zl-prod-g", Scope: linuxnet.ScopeLink}
	if f := routeFlags(r); f != rtfUp|rtfStatic {
		t.Errorf("interface route flags %#x", f)
	}
	r.Dst = netip.MustParsePrefix("10.201.0.5/32")
	if f := routeFlags(r); f != rtfUp|rtfStatic|rtfHost {
		t.Errorf("host route flags %#x", f)
	}
	r.Via = netip.MustParseAddr("10.200.0.2")
	if f := routeFlags(r); f != rtfUp|rtfStatic|rtfHost|rtfGateway {
		t.Errorf("gateway route flags %#x", f)
	}
	if err := checkRoute(r); err != nil {
		t.Errorf("valid route refused: %v", err)
	}
	for name, bad := range map[string]linuxnet.Route{
		"no device":    {Dst: netip.MustParsePrefix("10.0.0.0/8")},
		"no dst":       {Dev: "x"},
		"mixed family": {Dst: netip.MustParsePrefix("10.0.0.0/8"), Dev: "x", Via: netip.MustParseAddr("fd00::1")},
		"src":          {Dst: netip.MustParsePrefix("10.0.0.0/8"), Dev: "x", Src: netip.MustParseAddr("10.0.0.1")},
		"host scope":   {Dst: netip.MustParsePrefix("10.0.0.0/8"), Dev: "x", Scope: linuxnet.ScopeHost},
	} {
		if err := checkRoute(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, bad := range []string{"0.0.0.0/0", "224.0.0.1/32", "fe80::1%utun1/64", "::ffff:10.0.0.1/120"} {
		p, err := netip.ParsePrefix(bad)
		if err == nil && linuxnet.CheckInterfacePrefix(p) == nil {
			t.Errorf("linuxnet.CheckInterfacePrefix(%s) accepted", bad)
		}
	}
}

func TestKindOf(t *testing.T) {
	for _, c := range []struct {
		name  string
		flags net.Flags
		want  string
	}{
		{"utun3", net.FlagUp | net.FlagPointToPoint, "tun"},
		{"lo0", net.FlagUp | net.FlagLoopback, "loopback"},
		{"bridge100", net.FlagUp, "bridge"},
		{"en0", net.FlagUp | net.FlagBroadcast, "device"},
	} {
		if got := kindOf(c.name, c.flags); got != c.want {
			t.Errorf("kindOf(%s) = %s, want %s", c.name, got, c.want)
		}
	}
}
