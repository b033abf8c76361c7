package linuxnet

import (
	"errors"
	"net"
	"net/netip"
	"slices"
)

// ErrNotNetns is wrapped by the errors about a file that is not a network namespace.
var ErrNotNetns = errors.New("not a network namespace")

// NetnsLink is what InspectNetns found of one interface inside a namespace.
type NetnsLink struct {
	Name  string
	Index int
	Kind  string
	MAC   net.HardwareAddr
	MTU   int
	Up    bool
	// Addrs are the interface's addresses with their prefix lengths, link-local ones
	// included.
	Addrs []netip.Prefix
	// Routes are the main table's routes out of the interface (both families).
	Routes []Route
}

// HasAddr reports whether the interface carries p (address and prefix length).
func (l NetnsLink) HasAddr(p netip.Prefix) bool { return slices.Contains(l.Addrs, p) }

// HasRoute reports whether a route to dst (host bits ignored) via via (the zero Addr for
// none) leaves through the interface.
func (l NetnsLink) HasRoute(dst netip.Prefix, via netip.Addr) bool {
	return slices.ContainsFunc(l.Routes, func(r Route) bool { return r.Dst == dst.Masked() && r.Via == via })
}
