package linuxnet

import (
	"fmt"
	"net/netip"
	"slices"
)

// The other platforms implement the same Network with their own system
// APIs (internal/darwinnet, internal/winnet) and must behave as this
// package does on Linux. The rules they share live here, beside the types
// they apply to.

// PlanAddrs decides which global addresses of an interface to remove and
// which to add so that, for each address family present in want, the
// interface has exactly want. Families absent from want and link-local
// addresses are left alone, as Net.EnsureAddrs does, so the engine sees
// the same behaviour on every platform.
func PlanAddrs(have, want []netip.Prefix) (add, del []netip.Prefix) {
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

// CheckInterfacePrefix rejects what the system APIs of the other platforms
// would misread as an interface address.
func CheckInterfacePrefix(p netip.Prefix) error {
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

// CheckPortableRoute rejects the parts of a Route that platform (named as
// users know it: "macOS", "Windows") has no equivalent for, rather than
// letting them be dropped silently.
func CheckPortableRoute(r Route, platform string) error {
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
		return fmt.Errorf("route %s: a preferred source address is not supported on %s routes", r, platform)
	}
	if r.Scope == ScopeHost {
		return fmt.Errorf("route %s: host-scope routes are a Linux notion; %s has no equivalent", r, platform)
	}
	return nil
}
