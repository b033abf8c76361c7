package linuxnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Attach step names, used in errors and by the tests' failure injection.
const (
	stepCreateVeth           = "create veth pair"
	stepContainerAddr        = "add container address"
	stepContainerUp          = "set container link up"
	stepContainerNoLinkLocal = "turn IPv6 link-local off on container link"
	stepContainerLo          = "set container loopback up"
	stepContainerDefault     = "add container default route"
	stepContainerRoute       = "add container route"
	stepHostAlias            = "label host end"
	stepHostMaster           = "attach host end to bridge"
	stepHostUp               = "set host end up"
	stepHostNoLinkLocal      = "turn IPv6 link-local off on host end"
	stepHostRoute            = "add host route"
)

// Attach creates a veth pair whose peer is born inside the container's namespace already
// named spec.IfName (one RTM_NEWLINK, so no temporary name can clash there), gives it the
// address, MTU and routes, brings it and lo up, then finishes the host end: MTU, bridge port,
// up, host route. Container-side configuration goes through a netlink handle opened on the
// container's namespace file, never by moving one of the caller's threads into it.
//
// Any failure rolls back every step already taken (routes, then the veth pair) and the
// error names the step and the object. Attach is idempotent: when the host end exists and
// the container already has spec.IfName as its veth peer with spec.Addr (and the MTU, bridge
// port, up state and routes all match) it returns nil without changing anything; when the
// host end exists but anything differs, the old pair is deleted and rebuilt.
//
// Calls for the same host end must not overlap; the engine serialises them per container.
func (n *Net) Attach(spec AttachSpec) error {
	if err := spec.check(); err != nil {
		return err
	}
	a := &attachment{n: n, spec: &spec}
	if err := a.run(); err != nil {
		return fmt.Errorf("attach %s to %s: %w", spec.HostName, spec.target(), err)
	}
	return nil
}

type attachment struct {
	n    *Net
	spec *AttachSpec
	ns   netns.NsHandle
	ch   *netlink.Handle // in the container's namespace

	bridgeIndex int
	host        netlink.Link // host end, once created
	peer        netlink.Link // container end, once created
	undo        []undoStep
}

type undoStep struct {
	what string
	fn   func() error
}

func (a *attachment) run() error {
	spec := a.spec
	if spec.Bridge != "" {
		br, found, err := lookupLink(a.n.h, spec.Bridge)
		switch {
		case err != nil:
			return fmt.Errorf("look up bridge %s: %w", spec.Bridge, err)
		case !found:
			return fmt.Errorf("bridge %s does not exist; set up the service's bridge first", spec.Bridge)
		case br.Type() != "bridge":
			return fmt.Errorf("%s is a %s link, not a bridge", spec.Bridge, kindOf(br))
		}
		a.bridgeIndex = br.Attrs().Index
	}

	ns, err := netns.GetFromPath(spec.netnsPath())
	if err != nil {
		return fmt.Errorf("open the container's network namespace %s (has the process exited?): %w", spec.netnsPath(), err)
	}
	a.ns = ns
	defer ns.Close()
	if spec.NetnsInode != 0 {
		ino, err := netnsInodeOf(int(ns), spec.netnsPath())
		if err != nil {
			return err
		}
		if ino != spec.NetnsInode {
			return fmt.Errorf("%s is no longer the network namespace the attachment was made in (inode %d, not %d): the namespace was deleted and another took its path", spec.netnsPath(), ino, spec.NetnsInode)
		}
	}
	if ns.Equal(a.n.ns) {
		// Creating the "container" end here would put eth0, its address and a default route
		// into the daemon's own namespace.
		return fmt.Errorf("%s is the daemon's own network namespace (a host-network container?); refusing to attach", spec.netnsPath())
	}
	if a.ch, err = handleAt(ns); err != nil {
		return fmt.Errorf("open a netlink socket in the container's network namespace %s: %w", spec.netnsPath(), err)
	}
	defer a.ch.Close()

	existing, found, err := lookupLink(a.n.h, spec.HostName)
	if err != nil {
		return fmt.Errorf("look up host end %s: %w", spec.HostName, err)
	}
	if found {
		same, err := a.matches(existing)
		if err != nil {
			return err
		}
		if same {
			return nil
		}
		if err := a.n.deleteLink(existing); err != nil {
			return fmt.Errorf("remove the outdated attachment %s before rebuilding it: %w", spec.HostName, err)
		}
	}

	if err := a.build(); err != nil {
		if rerr := a.rollback(); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	return nil
}

// build performs the attach steps in order, registering an undo for each one that leaves
// something behind.
func (a *attachment) build() error {
	if err := a.createVeth(); err != nil {
		return err
	}
	if err := a.configureContainerEnd(); err != nil {
		return err
	}
	return a.configureHostEnd()
}

// createVeth creates the pair with its container end already inside the container's
// namespace under its final name, so the container never sees a temporary name.
func (a *attachment) createVeth() error {
	spec := a.spec
	n := a.n
	attrs := netlink.NewLinkAttrs()
	attrs.Name = spec.HostName
	attrs.MTU = spec.MTU // the library applies it to the peer as well
	veth := netlink.NewVeth(attrs)
	veth.PeerName = spec.IfName
	veth.PeerNamespace = netlink.NsFd(a.ns)
	return a.step(stepCreateVeth, spec.HostName+" <-> "+spec.IfName, func() error {
		if err := n.h.LinkAdd(veth); err != nil {
			return a.explainCreateError(err)
		}
		a.host = veth
		// Registered before anything else can fail; with no index known yet the deletion
		// goes by name.
		a.undo = append(a.undo, undoStep{"delete veth pair " + spec.HostName, func() error {
			return n.deleteLink(a.host)
		}})
		if veth.Attrs().Index == 0 {
			return fmt.Errorf("the kernel created %s but it could not be found afterwards", spec.HostName)
		}
		peer, err := a.ch.LinkByName(spec.IfName)
		if err != nil {
			return fmt.Errorf("find the new %s in the container: %w", spec.IfName, err)
		}
		a.peer = peer
		return nil
	})
}

// configureContainerEnd gives the container its addresses, links and routes.
func (a *attachment) configureContainerEnd() error {
	spec := a.spec
	for _, addr := range spec.addrs() {
		if err := a.step(stepContainerAddr, addr.String()+" on "+spec.IfName, func() error {
			return a.ch.AddrAdd(a.peer, netlinkAddr(addr))
		}); err != nil {
			return err
		}
	}
	if !spec.hasIPv6() {
		if err := a.step(stepContainerNoLinkLocal, spec.IfName, func() error {
			return noLinkLocal(a.ch, a.peer)
		}); err != nil {
			return err
		}
	}
	if err := a.step(stepContainerUp, spec.IfName, func() error {
		return a.ch.LinkSetUp(a.peer)
	}); err != nil {
		return err
	}
	// lo is brought up but never taken down on rollback: the container may already rely on
	// it and an up loopback harms nothing.
	if err := a.step(stepContainerLo, "lo", func() error {
		lo, err := a.ch.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().Flags&net.FlagUp != 0 {
			return nil
		}
		return a.ch.LinkSetUp(lo)
	}); err != nil {
		return err
	}

	for _, gw := range spec.gateways() {
		r := Route{Dst: netip.PrefixFrom(unspecified(gw), 0), Dev: spec.IfName, Via: gw}
		if err := a.containerRoute(stepContainerDefault, r); err != nil {
			return err
		}
	}
	for _, cr := range spec.Routes {
		r := Route{Dst: cr.Dst, Dev: spec.IfName, Via: cr.Via, OnLink: cr.OnLink}
		if err := a.containerRoute(stepContainerRoute, r); err != nil {
			return err
		}
	}
	return nil
}

// configureHostEnd labels the host end, puts it on the bridge, brings it up and routes the
// container's addresses to it.
func (a *attachment) configureHostEnd() error {
	spec := a.spec
	n := a.n
	// The kernel ignores IFLA_IFALIAS when it creates a link, so the label
	// takes a request of its own.
	if spec.HostAlias != "" {
		if err := a.step(stepHostAlias, spec.HostName, func() error {
			return n.h.LinkSetAlias(a.host, spec.HostAlias)
		}); err != nil {
			return err
		}
	}
	if spec.Bridge != "" {
		if err := a.step(stepHostMaster, spec.HostName+" -> "+spec.Bridge, func() error {
			return n.h.LinkSetMasterByIndex(a.host, a.bridgeIndex)
		}); err != nil {
			return err
		}
		// A bridge port carries frames and needs no address of its own. A
		// routed host end keeps its link-local address: the host's IPv6
		// neighbour discovery towards the container goes out from it.
		if err := a.step(stepHostNoLinkLocal, spec.HostName, func() error {
			return noLinkLocal(n.h, a.host)
		}); err != nil {
			return err
		}
	}
	if err := a.step(stepHostUp, spec.HostName, func() error {
		return n.h.LinkSetUp(a.host)
	}); err != nil {
		return err
	}
	// The host route comes after "up": the kernel refuses IPv4 routes via a down device.
	for _, r := range spec.hostRoutes() {
		if err := a.step(stepHostRoute, r.String(), func() error {
			if err := n.h.RouteReplace(r.netlink(a.host.Attrs().Index)); err != nil {
				return err
			}
			a.undo = append(a.undo, undoStep{"delete host route " + r.String(), func() error {
				return deleteRoute(n.h, r, a.host.Attrs().Index)
			}})
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

func (a *attachment) containerRoute(step string, r Route) error {
	return a.step(step, r.String()+" in the container", func() error {
		if err := a.ch.RouteAdd(r.netlink(a.peer.Attrs().Index)); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("the container already has a route to %s: %w", r.Dst, err)
			}
			return err
		}
		a.undo = append(a.undo, undoStep{"delete container route " + r.String(), func() error {
			return deleteRoute(a.ch, r, a.peer.Attrs().Index)
		}})
		return nil
	})
}

// step runs one attach step, then the test hook; either failing fails the step.
func (a *attachment) step(name, object string, do func() error) error {
	if err := do(); err != nil {
		return fmt.Errorf("%s %s: %w", name, object, err)
	}
	if a.n.afterStep != nil {
		if err := a.n.afterStep(name); err != nil {
			return fmt.Errorf("%s %s: %w", name, object, err)
		}
	}
	return nil
}

// rollback undoes the completed steps in reverse order and reports what it could not undo.
func (a *attachment) rollback() error {
	var errs []error
	for _, u := range slices.Backward(a.undo) {
		if err := u.fn(); err != nil {
			errs = append(errs, fmt.Errorf("rollback: %s: %w", u.what, err))
		}
	}
	a.undo = nil
	return errors.Join(errs...)
}

func (a *attachment) explainCreateError(err error) error {
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	if _, found, _ := lookupLink(a.ch, a.spec.IfName); found {
		return fmt.Errorf("the container already has an interface named %s that this attachment does not own: %w", a.spec.IfName, err)
	}
	return fmt.Errorf("%s was created concurrently by someone else: %w", a.spec.HostName, err)
}

// matches reports whether the existing host link host and the container side are exactly
// what spec asks for. A host link of that name which is not a veth is never ours to replace.
func (a *attachment) matches(host netlink.Link) (bool, error) {
	spec := a.spec
	if host.Type() != "veth" {
		return false, fmt.Errorf("a %s link named %s already exists on the host; refusing to replace it with a veth", kindOf(host), spec.HostName)
	}
	peer, found, err := lookupLink(a.ch, spec.IfName)
	if err != nil {
		return false, fmt.Errorf("look up %s in the container: %w", spec.IfName, err)
	}
	if !found || peer.Type() != "veth" {
		return false, nil
	}
	// Each end of a veth names the other's ifindex in IFLA_LINK.
	if host.Attrs().ParentIndex != peer.Attrs().Index || peer.Attrs().ParentIndex != host.Attrs().Index {
		return false, nil
	}
	if id, err := a.n.h.GetNetNsIdByFd(int(a.ns)); err == nil && id >= 0 && host.Attrs().NetNsID >= 0 && id != host.Attrs().NetNsID {
		return false, nil
	}
	if spec.MTU > 0 && (host.Attrs().MTU != spec.MTU || peer.Attrs().MTU != spec.MTU) {
		return false, nil
	}
	if host.Attrs().Flags&net.FlagUp == 0 || peer.Attrs().Flags&net.FlagUp == 0 {
		return false, nil
	}
	if host.Attrs().MasterIndex != a.bridgeIndex {
		return false, nil
	}
	for _, addr := range spec.addrs() {
		addrs, err := listAddrs(a.ch, peer, familyOf(addr.Addr()))
		if err != nil {
			return false, err
		}
		if !slices.ContainsFunc(addrs, func(x netlink.Addr) bool { return prefixOf(x.IPNet) == addr }) {
			return false, nil
		}
	}
	want := spec.Routes
	for _, gw := range spec.gateways() {
		want = append(want, ContainerRoute{Dst: netip.PrefixFrom(unspecified(gw), 0), Via: gw})
	}
	for _, r := range want {
		routes, err := listRoutesOn(a.ch, peer, familyOf(r.Dst.Addr()))
		if err != nil {
			return false, err
		}
		if !hasRoute(routes, r.Dst.Masked(), r.Via) {
			return false, nil
		}
	}
	for _, hr := range spec.hostRoutes() {
		routes, err := listRoutesOn(a.n.h, host, familyOf(hr.Dst.Addr()))
		if err != nil {
			return false, err
		}
		if !hasRoute(routes, hr.Dst, netip.Addr{}) {
			return false, nil
		}
	}
	return true, nil
}

func hasRoute(routes []netlink.Route, dst netip.Prefix, via netip.Addr) bool {
	return slices.ContainsFunc(routes, func(nr netlink.Route) bool {
		r := routeFromNetlink(nr, "")
		return r.Dst == dst && r.Via == via
	})
}

// Detach deletes the host end of an attachment; the kernel deletes the container end with
// it, and with them every route through either end (including the host route). A missing
// link is not an error; a link of that name that is not a veth is refused.
//
// Detach returns once the kernel has finished the deletion, so the host name, the container
// interface name and the address are free for reuse. The kernel acknowledges RTM_DELLINK
// only after an RCU barrier, which dominates the cost (typically 15-30 ms, as for
// `ip link del`); the deletion runs on its own socket so other operations are not held up.
func (n *Net) Detach(hostName string) error {
	link, found, err := lookupLink(n.h, hostName)
	if err != nil {
		return fmt.Errorf("detach %s: %w", hostName, err)
	}
	if !found {
		return nil
	}
	if link.Type() != "veth" {
		return fmt.Errorf("detach %s: it is a %s link, not the veth of an attachment; refusing to delete it", hostName, kindOf(link))
	}
	if err := n.deleteLink(link); err != nil {
		return fmt.Errorf("detach %s: %w", hostName, err)
	}
	return nil
}

// ContainerHasLink reports whether the network namespace of pid has an interface ifName
// carrying addr. A process that no longer exists has nothing (false, nil).
func ContainerHasLink(pid int, ifName string, addr netip.Prefix) (bool, error) {
	if pid <= 0 {
		return false, fmt.Errorf("check %s in pid %d: not a valid pid", ifName, pid)
	}
	path := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	ns, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return false, nil
		}
		return false, fmt.Errorf("check %s in pid %d: open %s: %w", ifName, pid, path, err)
	}
	defer ns.Close()
	h, err := handleAt(ns)
	if err != nil {
		return false, fmt.Errorf("check %s in pid %d: open a netlink socket in its namespace: %w", ifName, pid, err)
	}
	defer h.Close()
	link, found, err := lookupLink(h, ifName)
	if err != nil {
		return false, fmt.Errorf("check %s in pid %d: %w", ifName, pid, err)
	}
	if !found {
		return false, nil
	}
	addrs, err := listAddrs(h, link, familyOf(addr.Addr()))
	if err != nil {
		return false, fmt.Errorf("check %s in pid %d: %w", ifName, pid, err)
	}
	return slices.ContainsFunc(addrs, func(x netlink.Addr) bool { return prefixOf(x.IPNet) == addr }), nil
}

// handleAt opens a netlink handle inside ns. The library creates the socket by moving a
// locked OS thread into ns and back, and ignores a failure to move back. Doing it on a
// throwaway goroutine that leaves its thread locked (so the runtime destroys the thread)
// unless the thread verifiably returned to its namespace means no goroutine can ever be
// scheduled on a thread stuck in a container's namespace.
func handleAt(ns netns.NsHandle) (*netlink.Handle, error) {
	type result struct {
		h   *netlink.Handle
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		before, berr := threadNetnsInode()
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		after, aerr := threadNetnsInode()
		if berr == nil && aerr == nil && before == after {
			runtime.UnlockOSThread()
		}
		done <- result{h, err}
	}()
	r := <-done
	return r.h, r.err
}

func threadNetnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (s *AttachSpec) check() error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("attach %s: invalid spec: %s", s.HostName, fmt.Sprintf(format, args...))
	}
	if s.PID <= 0 && s.NetnsPath == "" {
		return fail("neither a PID nor a namespace path is given")
	}
	if err := checkIfName(s.HostName); err != nil {
		return fail("host end: %v", err)
	}
	if err := checkIfName(s.IfName); err != nil {
		return fail("container interface: %v", err)
	}
	if err := checkPrefix(s.Addr); err != nil {
		return fail("address: %v", err)
	}
	if s.MTU < 0 {
		return fail("MTU %d is negative", s.MTU)
	}
	if s.Bridge != "" {
		if err := checkIfName(s.Bridge); err != nil {
			return fail("bridge: %v", err)
		}
		if s.HostRoute {
			return fail("Bridge and HostRoute are mutually exclusive: a bridge port is reached through the bridge's subnet route")
		}
	}
	is4 := s.Addr.Addr().Is4()
	if s.HostRouteSrc.IsValid() {
		if !s.HostRoute {
			return fail("HostRouteSrc is set but HostRoute is not")
		}
		if s.HostRouteSrc.Is4() != is4 {
			return fail("host route source %s and address %s are of different address families", s.HostRouteSrc, s.Addr)
		}
	}
	if s.Gateway.IsValid() && s.Gateway.Is4() != is4 {
		return fail("gateway %s and address %s are of different address families", s.Gateway, s.Addr)
	}
	if s.Addr2.IsValid() {
		if err := checkPrefix(s.Addr2); err != nil {
			return fail("second address: %v", err)
		}
		if s.Addr2.Addr().Is4() == is4 {
			return fail("second address %s is of the family of %s; it must be of the other", s.Addr2, s.Addr)
		}
	}
	if s.Gateway2.IsValid() && (!s.Addr2.IsValid() || s.Gateway2.Is4() != s.Addr2.Addr().Is4()) {
		return fail("second gateway %s needs a second address of its family", s.Gateway2)
	}
	// A route's family must be one the container has an address of.
	ofFamily := func(a netip.Addr) bool {
		return a.Is4() == is4 || (s.Addr2.IsValid() && a.Is4() == s.Addr2.Addr().Is4())
	}
	for _, r := range s.Routes {
		if err := checkPrefix(r.Dst); err != nil {
			return fail("route destination: %v", err)
		}
		if !ofFamily(r.Dst.Addr()) || (r.Via.IsValid() && r.Via.Is4() != r.Dst.Addr().Is4()) {
			return fail("route %s via %s is not of the address family of %s", r.Dst, r.Via, s.Addr)
		}
	}
	return nil
}

func (s *AttachSpec) netnsPath() string {
	if s.NetnsPath != "" {
		return s.NetnsPath
	}
	return "/proc/" + strconv.Itoa(s.PID) + "/ns/net"
}

func (s *AttachSpec) target() string {
	if s.NetnsPath != "" {
		return s.NetnsPath
	}
	return "pid " + strconv.Itoa(s.PID)
}

// hasIPv6 says whether the container gets an IPv6 address on the link.
func (s *AttachSpec) hasIPv6() bool {
	return s.Addr.Addr().Is6() || s.Addr2.Addr().Is6()
}

// noLinkLocal keeps the kernel from giving link an IPv6 link-local address
// when it comes up, for links nobody talks IPv6 over. Each new link-local
// address announces itself (duplicate address detection, MLD reports,
// router solicitations) with multicast that a bridge floods to every port,
// so every attach cost every container on the bridge packets to receive
// and drop: 20 ms an attach at 1,000 containers on one bridge, 4.4 ms
// without (docs/benchmarks.md). A kernel without IPv6, or a link whose
// MTU is below IPv6's minimum, has no link-local address to turn off.
func noLinkLocal(h *netlink.Handle, link netlink.Link) error {
	err := h.LinkSetIP6AddrGenMode(link, nl.IN6_ADDR_GEN_MODE_NONE)
	if errors.Is(err, unix.EAFNOSUPPORT) {
		return nil
	}
	return err
}

// addrs are the container's addresses: Addr, and Addr2 when set.
func (s *AttachSpec) addrs() []netip.Prefix {
	if s.Addr2.IsValid() {
		return []netip.Prefix{s.Addr, s.Addr2}
	}
	return []netip.Prefix{s.Addr}
}

// gateways are the container's default routers, one per family.
func (s *AttachSpec) gateways() []netip.Addr {
	var out []netip.Addr
	for _, gw := range []netip.Addr{s.Gateway, s.Gateway2} {
		if gw.IsValid() {
			out = append(out, gw)
		}
	}
	return out
}

// hostRoutes are the host-namespace routes to the container's addresses
// (HostRoute), the source address on the first family's only.
func (s *AttachSpec) hostRoutes() []Route {
	if !s.HostRoute {
		return nil
	}
	out := []Route{s.hostRoute()}
	if a := s.Addr2.Addr(); a.IsValid() {
		out = append(out, Route{Dst: netip.PrefixFrom(a, a.BitLen()), Dev: s.HostName})
	}
	return out
}

func (s *AttachSpec) hostRoute() Route {
	a := s.Addr.Addr()
	// ScopeAuto: link scope for IPv4 (no gateway), universe for IPv6, as `ip route` does.
	return Route{Dst: netip.PrefixFrom(a, a.BitLen()), Dev: s.HostName, Src: s.HostRouteSrc}
}

func unspecified(like netip.Addr) netip.Addr {
	if like.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}
