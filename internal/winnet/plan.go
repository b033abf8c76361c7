package winnet

import (
	"fmt"
	"net/netip"

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
// for.
func checkRoute(r linuxnet.Route) error { return linuxnet.CheckPortableRoute(r, "Windows") }

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
