package darwinnet

import (
	"fmt"
	"net/netip"
	"slices"

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

// planAddrs decides which global addresses of an interface to remove and
// which to add so that, for each address family present in want, the
// interface has exactly want. Families absent from want and link-local
// addresses are left alone, as linuxnet does, so the engine sees the same
// behaviour on every platform.
func planAddrs(have, want []netip.Prefix) (add, del []netip.Prefix) {
	families := map[bool]bool{} // Is4 → present in want
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

// checkPrefix rejects what the kernel would misread as an address.
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
		return fmt.Errorf("route %s: a preferred source address is not supported on macOS routes", r)
	}
	if r.Scope == linuxnet.ScopeHost {
		return fmt.Errorf("route %s: host-scope routes are a Linux notion; macOS has no equivalent", r)
	}
	return nil
}
