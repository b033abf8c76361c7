package linuxnet

import (
	"net/netip"
	"strings"
)

// MaxIfNameLen is the longest interface name the kernel accepts (IFNAMSIZ - 1).
const MaxIfNameLen = 15

// BridgeSpec describes a per-service bridge.
type BridgeSpec struct {
	// Name is the bridge's interface name (at most 15 bytes).
	Name string
	// Gateway is the bridge's own address with the service subnet's prefix length,
	// e.g. 10.200.3.17/28.
	Gateway netip.Prefix
	// Extra are further gateway addresses, one per range a service grew by
	// when its first subnet filled up, each with its range's prefix length.
	// The bridge carries exactly Gateway and Extra.
	Extra []netip.Prefix
	// MTU of the bridge; 0 leaves the current (or kernel default) MTU alone.
	MTU int
	// Alias, if set, is written to the link's IFLA_IFALIAS: a label that marks
	// who owns the link and survives our restarts.
	Alias string
}

// Scope is the scope of a route.
type Scope uint8

const (
	// ScopeAuto picks what `ip route` picks: link scope for a route without a gateway,
	// universe scope for one with a gateway.
	ScopeAuto Scope = iota
	// ScopeUniverse is a route to a destination anywhere (RT_SCOPE_UNIVERSE).
	ScopeUniverse
	// ScopeLink is a route to a destination on the directly attached link (RT_SCOPE_LINK).
	ScopeLink
	// ScopeHost is a route to a destination on this host (RT_SCOPE_HOST).
	ScopeHost
)

func (s Scope) String() string {
	switch s {
	case ScopeAuto:
		return "auto"
	case ScopeUniverse:
		return "universe"
	case ScopeLink:
		return "link"
	case ScopeHost:
		return "host"
	}
	return "unknown"
}

// Route is a route in the main table of the namespace a Net manages.
type Route struct {
	// Dst is the destination prefix, e.g. 10.200.3.18/32 or 0.0.0.0/0.
	Dst netip.Prefix
	// Dev is the outgoing interface.
	Dev string
	// Src is the preferred source address (optional).
	Src netip.Addr
	// Via is the gateway (optional).
	Via netip.Addr
	// Scope of the route; ScopeAuto when unset.
	Scope Scope
	// OnLink makes the kernel treat Via as directly reachable on Dev even though no
	// address of Dev covers it.
	OnLink bool
}

// LinkInfo describes one network interface.
type LinkInfo struct {
	Name  string
	Index int
	// Kind is the rtnetlink link kind: "bridge", "veth", "tun", "tap", "wireguard",
	// "device" (no kind, e.g. loopback or a physical NIC), ...
	Kind string
	// Master is the name of the bridge (or other master) the link is a port of, or "".
	Master string
	// Up reports whether the link is administratively up.
	Up  bool
	MTU int
	// PeerNetnsID is, for a veth, the namespace id (as seen from this namespace) of the
	// namespace holding its peer; -1 if unknown or not applicable.
	PeerNetnsID int
	// Alias is the link's IFLA_IFALIAS ("" if none).
	Alias string
}

// AttachSpec wires one interface into a container network namespace.
type AttachSpec struct {
	// PID is the container process; its namespace is /proc/<PID>/ns/net.
	PID int
	// NetnsPath overrides the namespace file (a pinned namespace, or tests).
	NetnsPath string
	// NetnsInode, if set, is the inode the namespace must have (see NetnsFileInode):
	// Attach refuses a namespace file that names another namespace by now, e.g. one a
	// runtime created under the path of a deleted one.
	NetnsInode uint64
	// HostName is the host end's name (at most 15 bytes), e.g. "zl-v4242-e0".
	HostName string
	// IfName is the interface name inside the container, e.g. "eth0".
	IfName string
	// Addr is the container address with prefix, e.g. 10.200.3.18/28 or 10.201.0.5/32.
	Addr netip.Prefix
	// Addr2, if set, is a second address of the other family (dual-stack),
	// e.g. fd00:200:0:1::18/64, with Gateway2 as its default route.
	Addr2    netip.Prefix
	Gateway2 netip.Addr
	// MTU of both ends; 0 leaves the kernel default.
	MTU int
	// Bridge, if set, makes the host end a port of this bridge.
	Bridge string
	// HostRoute, if set, routes Addr (as a /32 or /128) to the host end in the host
	// namespace, scope link, with source HostRouteSrc when that is set.
	HostRoute    bool
	HostRouteSrc netip.Addr
	// Gateway, if set, becomes the container's default route via IfName.
	Gateway netip.Addr
	// Routes are extra routes inside the container, all via IfName, of
	// either address's family.
	Routes []ContainerRoute
	// HostAlias, if set, is written to the host end's IFLA_IFALIAS.
	HostAlias string
}

// ContainerRoute is a route inside a container, always via the attached interface.
type ContainerRoute struct {
	Dst netip.Prefix
	// Via is the gateway; unset means Dst is directly on the link.
	Via netip.Addr
	// OnLink makes Via reachable even though the container's address does not cover it
	// (needed with /32 container addresses).
	OnLink bool
}

// String renders r the way `ip route` would write it.
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Dst.String())
	if r.Via.IsValid() {
		b.WriteString(" via " + r.Via.String())
	}
	b.WriteString(" dev " + r.Dev)
	if r.Scope != ScopeAuto {
		b.WriteString(" scope " + r.Scope.String())
	}
	if r.Src.IsValid() {
		b.WriteString(" src " + r.Src.String())
	}
	if r.OnLink {
		b.WriteString(" onlink")
	}
	return b.String()
}
