package darwinnet

import (
	"net/netip"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
)

// Route flags of <net/route.h> on darwin.
const (
	rtfUp        = 0x1
	rtfGateway   = 0x2
	rtfHost      = 0x4
	rtfStatic    = 0x800
	rtfWasCloned = 0x20000
	rtfLocal     = 0x200000
	rtfBroadcast = 0x400000
	rtfMulticast = 0x800000
)

// ribRoute is one route of the kernel's table, reduced to what we compare.
type ribRoute struct {
	Index int
	Flags int
	Dst   netip.Prefix
	Via   netip.Addr
}

// ownRoutes picks, out of the kernel's table, the routes Net.Routes
// reports for an interface: static unicast routes through it, minus the
// prefix routes Net itself installs for the interface's own addresses
// (the analogue of the routes Linux derives from addresses, which
// linuxnet leaves out too).
func ownRoutes(rib []ribRoute, ifIndex int, dev string, addrs []netip.Prefix) []linuxnet.Route {
	derived := map[netip.Prefix]bool{}
	for _, a := range addrs {
		derived[a.Masked()] = true
		derived[netip.PrefixFrom(a.Addr(), a.Addr().BitLen())] = true
	}
	var out []linuxnet.Route
	for _, r := range rib {
		switch {
		case r.Index != ifIndex,
			r.Flags&rtfUp == 0,
			r.Flags&rtfStatic == 0,
			r.Flags&(rtfWasCloned|rtfLocal|rtfBroadcast|rtfMulticast) != 0,
			derived[r.Dst.Masked()]:
			continue
		}
		lr := linuxnet.Route{Dst: r.Dst.Masked(), Dev: dev, Scope: linuxnet.ScopeLink}
		if r.Flags&rtfGateway != 0 && r.Via.IsValid() {
			lr.Via, lr.Scope = r.Via, linuxnet.ScopeUniverse
		}
		out = append(out, lr)
	}
	return out
}

// maskBits is the prefix length of a netmask, false when the mask is not
// contiguous ones.
func maskBits(m []byte) (int, bool) {
	bits, ended := 0, false
	for _, b := range m {
		for i := 7; i >= 0; i-- {
			one := b&(1<<i) != 0
			switch {
			case one && ended:
				return 0, false
			case one:
				bits++
			default:
				ended = true
			}
		}
	}
	return bits, true
}

// routeFlags are the rtm_flags of a route Net installs: a static route,
// through a gateway when r has one, else straight onto the interface
// (what `route add -interface` does); a full-length destination is a host
// route.
func routeFlags(r linuxnet.Route) int {
	f := rtfUp | rtfStatic
	if r.Via.IsValid() {
		f |= rtfGateway
	}
	if r.Dst.Bits() == r.Dst.Addr().BitLen() {
		f |= rtfHost
	}
	return f
}

// checkRoute rejects the parts of linuxnet.Route macOS has no equivalent
// for.
func checkRoute(r linuxnet.Route) error { return linuxnet.CheckPortableRoute(r, "macOS") }
