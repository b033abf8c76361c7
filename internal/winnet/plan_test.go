package winnet

import (
	"encoding/hex"
	"net/netip"
	"slices"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
)

func TestSockaddrInetLayout(t *testing.T) {
	for _, c := range []struct {
		addr string
		want string // hex of the 28 bytes
	}{
		// family 2 (LE), port 0, address in network order
		{"10.200.0.1", "0200" + "0000" + "0ac80001" + "0000000000000000" + "0000000000000000" + "00000000"},
		// family 23 (LE), port 0, flowinfo 0, address, scope 0
		{"fd00:200::1", "1700" + "0000" + "00000000" + "fd000200000000000000000000000001" + "00000000"},
	} {
		b := sockaddrInet(netip.MustParseAddr(c.addr))
		if got := hex.EncodeToString(b[:]); got != c.want {
			t.Errorf("sockaddrInet(%s)\n got %s\nwant %s", c.addr, got, c.want)
		}
		back, ok := addrOfSockaddrInet(b)
		if !ok || back != netip.MustParseAddr(c.addr) {
			t.Errorf("round trip of %s gave %s, %v", c.addr, back, ok)
		}
	}
	if b := sockaddrInet(netip.Addr{}); b != [sizeofSockaddrInet]byte{} {
		t.Errorf("no address must be AF_UNSPEC, all zero: %x", b)
	}
	if _, ok := addrOfSockaddrInet([sizeofSockaddrInet]byte{}); ok {
		t.Error("AF_UNSPEC read as an address")
	}
	// A v4-mapped address is stored as the IPv4 address it is.
	if b := sockaddrInet(netip.MustParseAddr("::ffff:10.0.0.1")); b != sockaddrInet(netip.MustParseAddr("10.0.0.1")) {
		t.Errorf("mapped address laid out as IPv6: %x", b)
	}
	if familyOf(netip.MustParseAddr("10.0.0.1")) != afInet || familyOf(netip.MustParseAddr("fd00::1")) != afInet6 {
		t.Error("familyOf")
	}
}

func TestOwnRoutes(t *testing.T) {
	const luid = 0x1234
	rows := []routeRow{
		{luid, mibIPProtoNetMg, netip.MustParsePrefix("10.201.0.0/16"), netip.IPv4Unspecified()},
		{luid, mibIPProtoNetMg, netip.MustParsePrefix("10.202.0.0/16"), netip.MustParseAddr("10.200.0.9")},
		{luid, mibIPProtoNetMg, netip.MustParsePrefix("fd00:1::/64"), netip.IPv6Unspecified()},
		{luid, mibIPProtoLocal, netip.MustParsePrefix("10.200.0.0/16"), netip.IPv4Unspecified()}, // from the address
		{luid, mibIPProtoLocal, netip.MustParsePrefix("224.0.0.0/4"), netip.IPv4Unspecified()},   // multicast
		{luid, mibIPProtoLocal, netip.MustParsePrefix("255.255.255.255/32"), netip.IPv4Unspecified()},
		{luid + 1, mibIPProtoNetMg, netip.MustParsePrefix("10.203.0.0/16"), netip.IPv4Unspecified()}, // other adapter
	}
	got := ownRoutes(rows, luid, "zl-prod-g")
	want := []linuxnet.Route{
		{Dst: netip.MustParsePrefix("10.201.0.0/16"), Dev: "zl-prod-g", Scope: linuxnet.ScopeLink},
		{Dst: netip.MustParsePrefix("10.202.0.0/16"), Dev: "zl-prod-g", Via: netip.MustParseAddr("10.200.0.9"), Scope: linuxnet.ScopeUniverse},
		{Dst: netip.MustParsePrefix("fd00:1::/64"), Dev: "zl-prod-g", Scope: linuxnet.ScopeLink},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ownRoutes:\n got %v\nwant %v", got, want)
	}
}

func TestChecks(t *testing.T) {
	ok := linuxnet.Route{Dst: netip.MustParsePrefix("10.201.0.0/16"), Dev: "zl-prod-g", Scope: linuxnet.ScopeLink, OnLink: true}
	if err := checkRoute(ok); err != nil {
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
			t.Errorf("route %s: accepted", name)
		}
	}
	for _, bad := range []string{"0.0.0.0/8", "224.0.0.1/32", "::ffff:10.0.0.1/120"} {
		if linuxnet.CheckInterfacePrefix(netip.MustParsePrefix(bad)) == nil {
			t.Errorf("linuxnet.CheckInterfacePrefix(%s) accepted", bad)
		}
	}
	if linuxnet.CheckInterfacePrefix(netip.Prefix{}) == nil {
		t.Error("checkPrefix accepted the zero prefix")
	}
}

func TestKindOf(t *testing.T) {
	for typ, want := range map[uint32]string{6: "device", 24: "loopback", 53: "tun", 71: "device", 131: "tunnel", 243: "iftype-243"} {
		if got := kindOf(typ); got != want {
			t.Errorf("kindOf(%d) = %s, want %s", typ, got, want)
		}
	}
}
