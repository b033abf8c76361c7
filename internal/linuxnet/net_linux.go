package linuxnet

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Net performs link operations in the network namespace it was created in (the daemon's),
// through one long-lived netlink handle. It is safe for concurrent use: the handle
// serialises requests on its socket.
type Net struct {
	h *netlink.Handle
	// ns is the namespace of h. Link deletions open their own socket in it: the kernel
	// answers RTM_DELLINK only after an RCU barrier (tens of milliseconds under load), and
	// holding h's socket lock that long would stall every other operation on this Net.
	ns netns.NsHandle
	// raw carries the few requests the netlink library does not model (bridge STP state).
	// It is a second socket in the same namespace, opened alongside h.
	raw map[int]*nl.SocketHandle

	// afterStep, when set (tests only), runs after every completed Attach step; an error
	// from it is treated as that step failing.
	afterStep func(step string) error
}

// New opens netlink sockets in the calling thread's network namespace. In a daemon that
// never switches thread namespaces that is the daemon's namespace.
func New() (*Net, error) {
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("open the current network namespace: %w", err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("open an rtnetlink socket: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		ns.Close()
		return nil, fmt.Errorf("open an rtnetlink socket: %w", err)
	}
	return &Net{h: h, ns: ns, raw: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}}, nil
}

// Close releases the netlink sockets. The Net must not be used afterwards.
func (n *Net) Close() {
	n.h.Close()
	for _, sh := range n.raw {
		sh.Close()
	}
	n.ns.Close()
}

// deleteLink deletes a link through a socket of its own (see Net.ns). A link that is already
// gone is not an error.
func (n *Net) deleteLink(link netlink.Link) error {
	h, err := handleAt(n.ns)
	if err != nil {
		return fmt.Errorf("open an rtnetlink socket: %w", err)
	}
	defer h.Close()
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// EnsureBridge creates the bridge spec.Name or adopts an existing bridge of that name
// without disturbing its ports. Afterwards the link is a bridge with STP off, the given MTU,
// exactly spec.Gateway among its global addresses of that family, and administratively up.
// An existing link of that name that is not a bridge is an error and is left alone.
func (n *Net) EnsureBridge(spec BridgeSpec) error {
	if err := checkIfName(spec.Name); err != nil {
		return fmt.Errorf("ensure bridge: %w", err)
	}
	if err := checkPrefix(spec.Gateway); err != nil {
		return fmt.Errorf("ensure bridge %s: gateway: %w", spec.Name, err)
	}
	for _, p := range spec.Extra {
		if err := checkPrefix(p); err != nil {
			return fmt.Errorf("ensure bridge %s: gateway: %w", spec.Name, err)
		}
	}
	if spec.MTU < 0 {
		return fmt.Errorf("ensure bridge %s: MTU %d is negative", spec.Name, spec.MTU)
	}
	link, found, err := lookupLink(n.h, spec.Name)
	if err != nil {
		return fmt.Errorf("ensure bridge %s: %w", spec.Name, err)
	}
	created := false
	if !found {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = spec.Name
		attrs.MTU = spec.MTU
		attrs.HardwareAddr = bridgeMAC(spec.Name)
		err := n.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		// EEXIST: someone created it between our lookup and now; adopt it below like any
		// other existing link, which includes checking that it is a bridge.
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ensure bridge %s: create: %w", spec.Name, err)
		}
		created = err == nil
		if link, found, err = lookupLink(n.h, spec.Name); err != nil || !found {
			return fmt.Errorf("ensure bridge %s: the bridge vanished right after it was created (concurrent delete?): %v", spec.Name, err)
		}
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("ensure bridge %s: a %s link with that name already exists; it was left alone, delete it or choose another bridge name",
			spec.Name, kindOf(link))
	}
	// Label first: the kernel ignores a label given at creation, and a
	// daemon killed before the label would leave a bridge its restart does
	// not recognise as its own. Unlabelled, it must at least carry no
	// address (and so no route).
	if spec.Alias != "" && link.Attrs().Alias != spec.Alias {
		if err := n.h.LinkSetAlias(link, spec.Alias); err != nil {
			return fmt.Errorf("ensure bridge %s: set alias: %w", spec.Name, err)
		}
	}
	if err := n.setBridgeSTPOff(link.Attrs().Index); err != nil {
		return fmt.Errorf("ensure bridge %s: turn STP off: %w", spec.Name, err)
	}
	// Setting the MTU explicitly (even on a bridge just created with it) marks it as chosen
	// by the user, so the kernel stops re-deriving it from the ports' MTUs.
	if spec.MTU > 0 && (created || link.Attrs().MTU != spec.MTU) {
		if err := n.h.LinkSetMTU(link, spec.MTU); err != nil {
			return fmt.Errorf("ensure bridge %s: set MTU %d: %w", spec.Name, spec.MTU, err)
		}
	}
	if err := ensureAddrs(n.h, link, append([]netip.Prefix{spec.Gateway}, spec.Extra...)); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", spec.Name, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := n.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("ensure bridge %s: set up: %w", spec.Name, err)
		}
	}
	return nil
}

// bridgeMAC is the address a bridge is created with: locally administered,
// unicast, and derived from the name so a re-created bridge answers with
// the address its containers have cached. A bridge whose address was not
// chosen takes the lowest address of its ports and changes it whenever that
// port leaves, and every other container on it then sends to a gateway
// address nobody has until its neighbour entry goes stale (30 s and more).
func bridgeMAC(name string) net.HardwareAddr {
	h := fnv.New64a()
	h.Write([]byte(name))
	sum := h.Sum(nil)
	return net.HardwareAddr{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// SetAlias writes the link's IFLA_IFALIAS.
func (n *Net) SetAlias(name, alias string) error {
	link, err := mustLink(n.h, name)
	if err != nil {
		return fmt.Errorf("set alias of %s: %w", name, err)
	}
	if link.Attrs().Alias == alias {
		return nil
	}
	if err := n.h.LinkSetAlias(link, alias); err != nil {
		return fmt.Errorf("set alias of %s: %w", name, err)
	}
	return nil
}

// setBridgeSTPOff sends IFLA_BR_STP_STATE=0 for an existing bridge. Only the bridge attribute
// is carried, so ports and every other setting stay as they are.
func (n *Net) setBridgeSTPOff(index int) error {
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{
			Len:   uint32(unix.SizeofNlMsghdr),
			Type:  unix.RTM_NEWLINK,
			Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK,
		},
		Sockets: n.raw,
	}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(nl.IFLA_BR_STP_STATE, nl.Uint32Attr(0))
	req.AddData(info)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// DeleteLink deletes the named link of any kind. A missing link is not an error.
func (n *Net) DeleteLink(name string) error {
	link, found, err := lookupLink(n.h, name)
	if err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	if !found {
		return nil
	}
	if err := n.deleteLink(link); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// LinkExists reports whether a link of that name exists.
func (n *Net) LinkExists(name string) (bool, error) {
	_, found, err := lookupLink(n.h, name)
	if err != nil {
		return false, fmt.Errorf("look up link %s: %w", name, err)
	}
	return found, nil
}

// SetUp sets the named link administratively up.
func (n *Net) SetUp(name string) error {
	link, err := mustLink(n.h, name)
	if err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if err := n.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// SetMTU sets the MTU of the named link.
func (n *Net) SetMTU(name string, mtu int) error {
	link, err := mustLink(n.h, name)
	if err != nil {
		return fmt.Errorf("set MTU of %s: %w", name, err)
	}
	if link.Attrs().MTU == mtu {
		return nil
	}
	if err := n.h.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("set MTU of %s to %d: %w", name, mtu, err)
	}
	return nil
}

// EnsureAddrs makes want exactly the global-scope addresses of the named link, per address
// family present in want: missing ones are added, other global addresses of those families
// are removed. Link-local addresses and families absent from want are left alone, so an
// empty want changes nothing. IPv6 addresses are added without duplicate address detection
// because IPAM already guarantees uniqueness and DAD would hold them tentative for seconds.
func (n *Net) EnsureAddrs(name string, want []netip.Prefix) error {
	for _, p := range want {
		if err := checkPrefix(p); err != nil {
			return fmt.Errorf("ensure addresses of %s: %w", name, err)
		}
	}
	link, err := mustLink(n.h, name)
	if err != nil {
		return fmt.Errorf("ensure addresses of %s: %w", name, err)
	}
	return ensureAddrs(n.h, link, want)
}

func ensureAddrs(h *netlink.Handle, link netlink.Link, want []netip.Prefix) error {
	byFamily := map[int][]netip.Prefix{}
	for _, p := range want {
		byFamily[familyOf(p.Addr())] = append(byFamily[familyOf(p.Addr())], p)
	}
	name := link.Attrs().Name
	for family, wanted := range byFamily {
		existing, err := listAddrs(h, link, family)
		if err != nil {
			return err
		}
		present := map[netip.Prefix]bool{}
		removed := false
		for _, a := range existing {
			if a.Scope != unix.RT_SCOPE_UNIVERSE {
				continue
			}
			p := prefixOf(a.IPNet)
			if slices.Contains(wanted, p) {
				present[p] = true
				continue
			}
			if err := h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove stale address %s from %s: %w", p, name, err)
			}
			removed = true
		}
		for _, p := range wanted {
			// Removing an IPv4 primary address also removes the secondaries of its subnet
			// (unless promote_secondaries is on), so after any removal nothing listed above
			// can be trusted to still be there.
			if present[p] && !removed {
				continue
			}
			if err := h.AddrReplace(link, netlinkAddr(p)); err != nil {
				return fmt.Errorf("add address %s to %s: %w", p, name, err)
			}
		}
	}
	return nil
}

// EnsureRoute installs r in the main table, replacing any route to the same destination
// (same prefix and metric). Idempotent.
func (n *Net) EnsureRoute(r Route) error {
	if err := r.check(); err != nil {
		return fmt.Errorf("ensure route %s: %w", r.Dst, err)
	}
	link, err := mustLink(n.h, r.Dev)
	if err != nil {
		return fmt.Errorf("ensure route %s dev %s: %w", r.Dst, r.Dev, err)
	}
	nr := r.netlink(link.Attrs().Index)
	if err := n.h.RouteReplace(nr); err != nil {
		return fmt.Errorf("ensure route %s: %w", r, err)
	}
	return nil
}

// DeleteRoute deletes r from the main table. A missing route or device is not an error.
// Src and Via narrow the match when set.
func (n *Net) DeleteRoute(r Route) error {
	if err := r.check(); err != nil {
		return fmt.Errorf("delete route %s: %w", r.Dst, err)
	}
	link, found, err := lookupLink(n.h, r.Dev)
	if err != nil {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	if !found {
		return nil
	}
	if err := deleteRoute(n.h, r, link.Attrs().Index); err != nil {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

func deleteRoute(h *netlink.Handle, r Route, linkIndex int) error {
	nr := r.netlink(linkIndex)
	if r.Scope == ScopeAuto {
		// The library copies the route's scope into the request, and the kernel only
		// deletes routes of that exact scope unless it is RT_SCOPE_NOWHERE ("any").
		nr.Scope = netlink.SCOPE_NOWHERE
	}
	nr.Protocol = 0 // match whoever installed it
	err := h.RouteDel(nr)
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// Routes lists the main-table unicast routes whose output device is dev, both families,
// leaving out the routes the kernel derives from addresses (proto kernel). A missing device
// has no routes.
func (n *Net) Routes(dev string) ([]Route, error) {
	link, found, err := lookupLink(n.h, dev)
	if err != nil {
		return nil, fmt.Errorf("list routes on %s: %w", dev, err)
	}
	if !found {
		return nil, nil
	}
	var out []Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := listRoutesOn(n.h, link, family)
		if err != nil {
			return nil, err
		}
		for _, nr := range routes {
			if nr.Protocol == unix.RTPROT_KERNEL || nr.Type != unix.RTN_UNICAST {
				continue
			}
			out = append(out, routeFromNetlink(nr, dev))
		}
	}
	return out, nil
}

// Links lists every link whose name starts with prefix.
func (n *Net) Links(prefix string) ([]LinkInfo, error) {
	links, err := listLinks(n.h)
	if err != nil {
		return nil, err
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []LinkInfo
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, prefix) {
			continue
		}
		info := LinkInfo{
			Name:        a.Name,
			Index:       a.Index,
			Kind:        kindOf(l),
			Master:      names[a.MasterIndex],
			Up:          a.Flags&net.FlagUp != 0,
			MTU:         a.MTU,
			PeerNetnsID: -1,
			Alias:       a.Alias,
		}
		if info.Kind == "veth" && a.NetNsID >= 0 {
			info.PeerNetnsID = a.NetNsID
		}
		out = append(out, info)
	}
	return out, nil
}

// lookupLink finds a link by name; found is false (with a nil error) when it does not exist.
func lookupLink(h *netlink.Handle, name string) (link netlink.Link, found bool, err error) {
	link, err = h.LinkByName(name)
	if err != nil {
		if isLinkNotFound(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return link, true, nil
}

// mustLink is lookupLink for callers that need the link to exist.
func mustLink(h *netlink.Handle, name string) (netlink.Link, error) {
	link, found, err := lookupLink(h, name)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("no link named %s exists", name)
	}
	return link, nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// kindOf names a link's kind the way `ip -d link` does, except that TUN/TAP devices are
// split into "tun" and "tap".
func kindOf(l netlink.Link) string {
	if t, ok := l.(*netlink.Tuntap); ok {
		if t.Mode == netlink.TUNTAP_MODE_TAP {
			return "tap"
		}
		return "tun"
	}
	return l.Type()
}

func (r Route) check() error {
	if err := checkPrefix(r.Dst); err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	if r.Dev == "" {
		return errors.New("no device given")
	}
	if r.Src.IsValid() && r.Src.Is4() != r.Dst.Addr().Is4() {
		return fmt.Errorf("source %s and destination %s are of different address families", r.Src, r.Dst)
	}
	if r.Via.IsValid() && r.Via.Is4() != r.Dst.Addr().Is4() {
		return fmt.Errorf("gateway %s and destination %s are of different address families", r.Via, r.Dst)
	}
	if r.Scope > ScopeHost {
		return fmt.Errorf("unknown scope %d", r.Scope)
	}
	return nil
}

func (r Route) netlink(linkIndex int) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       ipNet(r.Dst.Masked()),
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  unix.RTPROT_STATIC,
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	}
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	if r.OnLink {
		nr.Flags |= int(netlink.FLAG_ONLINK)
	}
	switch r.Scope {
	case ScopeAuto:
		// What `ip route` does: IPv4 routes without a gateway are link-scoped; IPv6 has
		// no route scopes beyond universe.
		if !r.Via.IsValid() && r.Dst.Addr().Is4() {
			nr.Scope = netlink.SCOPE_LINK
		} else {
			nr.Scope = netlink.SCOPE_UNIVERSE
		}
	case ScopeUniverse:
		nr.Scope = netlink.SCOPE_UNIVERSE
	case ScopeLink:
		nr.Scope = netlink.SCOPE_LINK
	case ScopeHost:
		nr.Scope = netlink.SCOPE_HOST
	}
	return nr
}

func routeFromNetlink(nr netlink.Route, dev string) Route {
	r := Route{Dev: dev, OnLink: nr.Flags&int(netlink.FLAG_ONLINK) != 0}
	if nr.Dst != nil {
		r.Dst = prefixOf(nr.Dst)
	} else if nr.Family == netlink.FAMILY_V6 {
		r.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		r.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if a, ok := netip.AddrFromSlice(nr.Gw); ok {
		r.Via = a.Unmap()
	}
	if a, ok := netip.AddrFromSlice(nr.Src); ok {
		r.Src = a.Unmap()
	}
	switch nr.Scope {
	case netlink.SCOPE_UNIVERSE:
		r.Scope = ScopeUniverse
	case netlink.SCOPE_LINK:
		r.Scope = ScopeLink
	case netlink.SCOPE_HOST:
		r.Scope = ScopeHost
	}
	return r
}

func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("no valid address/prefix given")
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("%s is an IPv4-mapped IPv6 address; give the plain IPv4 form", p)
	}
	if p.Addr().Zone() != "" {
		return fmt.Errorf("%s carries a zone, which an interface address cannot have", p)
	}
	return nil
}

// checkIfName applies the kernel's rules for interface names (dev_valid_name).
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > MaxIfNameLen:
		return fmt.Errorf("interface name %q is %d bytes long; the kernel allows at most %d", name, len(name), MaxIfNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("interface name %q contains '/', ':' or whitespace", name)
	}
	return nil
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones)
}

func netlinkAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}
