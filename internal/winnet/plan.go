package winnet

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
)

// Interface types of ipifcons.h that matter here.
const (
	ifTypeEthernet  = 6
	ifTypeLoopback  = 24
	ifTypeWireless  = 71
	ifTypeVirtual   = 53 // IF_TYPE_PROP_VIRTUAL: Wintun, and other virtual adapters
	ifTypeTunnel    = 131
	ifTypeIEEE1394  = 144
	mibIPProtoLocal = 2 // routes Windows derives from addresses
	mibIPProtoNetMg = 3 // static routes: the ones we install
)

// planAddrs decides which unicast addresses of an adapter to remove and
// which to add so that, for each family present in want, the adapter has
// exactly want; link-local addresses and absent families are left alone,
// as linuxnet does.
func planAddrs(have, want []netip.Prefix) (add, del []netip.Prefix) {
	families := map[bool]bool{}
	for _, p := range want {
		families[p.Addr().Is4()] = true
	}
	for _, h := range have {
		if h.Addr().IsLinkLocalUnicast() || !families[h.Addr().Is4()] {
			continue
		}
		if !slices.Contains(want, h) {
			del = append(del, h)
		}
	}
	for _, w := range want {
		if !slices.Contains(have, w) {
			add = append(add, w)
		}
	}
	return add, del
}

// checkPrefix rejects what cannot be an interface address.
func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix %v", p)
	}
	a := p.Addr()
	if a.Zone() != "" || a.Is4In6() {
		return fmt.Errorf("prefix %s: use plain IPv4 or IPv6 without a zone", p)
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("prefix %s: %s cannot be an interface address", p, a)
	}
	return nil
}

// routeRow is one row of the IP forwarding table, reduced to what we
// compare.
type routeRow struct {
	LUID     uint64
	Protocol uint32
	Dst      netip.Prefix
	NextHop  netip.Addr // invalid or unspecified: on-link
}

// ownRoutes picks the static routes through one adapter; on-link routes
// Windows derives from addresses (and its multicast and broadcast routes)
// are MIB_IPPROTO_LOCAL and left out.
func ownRoutes(rows []routeRow, luid uint64, dev string) []linuxnet.Route {
	var out []linuxnet.Route
	for _, r := range rows {
		if r.LUID != luid || r.Protocol != mibIPProtoNetMg {
			continue
		}
		lr := linuxnet.Route{Dst: r.Dst.Masked(), Dev: dev, Scope: linuxnet.ScopeLink}
		if r.NextHop.IsValid() && !r.NextHop.IsUnspecified() {
			lr.Via, lr.Scope = r.NextHop, linuxnet.ScopeUniverse
		}
		out = append(out, lr)
	}
	return out
}

// checkRoute rejects the parts of linuxnet.Route Windows has no equivalent
// for, rather than silently dropping them.
func checkRoute(r linuxnet.Route) error {
	if !r.Dst.IsValid() {
		return fmt.Errorf("route destination %v is invalid", r.Dst)
	}
	if r.Dev == "" {
		return fmt.Errorf("route %s has no device", r.Dst)
	}
	if r.Via.IsValid() && r.Via.Is4() != r.Dst.Addr().Is4() {
		return fmt.Errorf("route %s: gateway %s is of the other address family", r.Dst, r.Via)
	}
	if r.Src.IsValid() {
		return fmt.Errorf("route %s: a preferred source address is not supported on Windows routes", r)
	}
	if r.Scope == linuxnet.ScopeHost {
		return fmt.Errorf("route %s: host-scope routes are a Linux notion; Windows has no equivalent", r)
	}
	return nil
}

// kindOf names an interface type in linuxnet's vocabulary.
func kindOf(ifType uint32) string {
	switch ifType {
	case ifTypeLoopback:
		return "loopback"
	case ifTypeVirtual:
		return "tun"
	case ifTypeTunnel:
		return "tunnel"
	case ifTypeEthernet, ifTypeWireless, ifTypeIEEE1394:
		return "device"
	}
	return fmt.Sprintf("iftype-%d", ifType)
}
