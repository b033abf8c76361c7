package darwinnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"golang.org/x/net/route"
	"golang.org/x/sys/unix"
)

// The layouts in layout.go and plan.go hard-code darwin's ABI; these fail
// to compile if the system disagrees.
var (
	_ = [1]struct{}{}[afInet-unix.AF_INET]
	_ = [1]struct{}{}[afInet6-unix.AF_INET6]
	_ = [1]struct{}{}[iffUp-unix.IFF_UP]
	_ = [1]struct{}{}[rtfUp-unix.RTF_UP]
	_ = [1]struct{}{}[rtfGateway-unix.RTF_GATEWAY]
	_ = [1]struct{}{}[rtfHost-unix.RTF_HOST]
	_ = [1]struct{}{}[rtfStatic-unix.RTF_STATIC]
	_ = [1]struct{}{}[rtfWasCloned-unix.RTF_WASCLONED]
	_ = [1]struct{}{}[rtfLocal-unix.RTF_LOCAL]
	_ = [1]struct{}{}[rtfBroadcast-unix.RTF_BROADCAST]
	_ = [1]struct{}{}[rtfMulticast-unix.RTF_MULTICAST]
	_ = [1]struct{}{}[sizeofSockaddrIn-unix.SizeofSockaddrInet4]
	_ = [1]struct{}{}[sizeofSockaddrIn6-unix.SizeofSockaddrInet6]
)

func init() {
	// Request numbers that x/sys/unix also knows must agree with ours
	// (the IPv6 ones it lacks are built the same way).
	for _, c := range []struct{ ours, sys uint }{
		{siocSIFFLAGS, unix.SIOCSIFFLAGS}, {siocGIFFLAGS, unix.SIOCGIFFLAGS},
		{siocAIFADDR, unix.SIOCAIFADDR}, {siocDIFADDR, unix.SIOCDIFADDR},
		{siocSIFMTU, unix.SIOCSIFMTU}, {siocGIFMTU, unix.SIOCGIFMTU},
	} {
		if c.ours != c.sys {
			panic(fmt.Sprintf("darwinnet: ioctl request %#x disagrees with the system's %#x", c.ours, c.sys))
		}
	}
}

var errNoBridges = errors.New("bridges, veth pairs and network namespaces need Linux; this daemon runs on darwin, where containers attach as guest_managed peers")

// Net configures utun interfaces in the host's network stack.
type Net struct {
	resolve func(name string) (system string, ok bool)

	mu     sync.Mutex
	labels map[string]string   // engine name → label (see the package doc)
	names  map[string]struct{} // engine names resolved so far, for Links
	seq    atomic.Int32
}

// New returns a Net that resolves the engine's device names through
// resolve (wg.SystemName); nil resolves nothing, so every name is a
// literal interface name.
func New(resolve func(name string) (system string, ok bool)) (*Net, error) {
	if resolve == nil {
		resolve = func(string) (string, bool) { return "", false }
	}
	return &Net{resolve: resolve, labels: map[string]string{}, names: map[string]struct{}{}}, nil
}

// Close releases nothing: Net keeps no descriptors open between calls.
func (n *Net) Close() {}

// system is the kernel's name for the engine's name.
func (n *Net) system(name string) string {
	if s, ok := n.resolve(name); ok {
		n.mu.Lock()
		n.names[name] = struct{}{}
		n.mu.Unlock()
		return s
	}
	return name
}

// iface looks name up, ok false when no such interface exists.
func (n *Net) iface(name string) (*net.Interface, bool, error) {
	sys := n.system(name)
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, false, fmt.Errorf("list interfaces: %w", err)
	}
	for i := range ifs {
		if ifs[i].Name == sys {
			return &ifs[i], true, nil
		}
	}
	return nil, false, nil
}

func (n *Net) mustIface(name string) (*net.Interface, error) {
	ifi, ok, err := n.iface(name)
	if err != nil {
		return nil, err
	}
	if !ok {
		if sys := n.system(name); sys != name {
			return nil, fmt.Errorf("interface %s (%s) does not exist", name, sys)
		}
		return nil, fmt.Errorf("interface %s does not exist (is its WireGuard device open?)", name)
	}
	return ifi, nil
}

func (n *Net) EnsureBridge(linuxnet.BridgeSpec) error { return errNoBridges }
func (n *Net) Attach(linuxnet.AttachSpec) error       { return errNoBridges }
func (n *Net) Detach(string) error                    { return errNoBridges }

// DeleteLink makes sure the interface is gone. A utun interface lives
// exactly as long as the descriptor of the process that opened it, so the
// only way to delete ours is to close its WireGuard device; an interface
// still present is either ours and open, or someone else's, and is never
// touched.
func (n *Net) DeleteLink(name string) error {
	ifi, ok, err := n.iface(name)
	if err != nil || !ok {
		return err
	}
	if _, ours := n.resolve(name); ours {
		return fmt.Errorf("interface %s (%s) is open in this process; close its WireGuard device to remove it", name, ifi.Name)
	}
	return fmt.Errorf("interface %s is not ours; refusing to remove it", ifi.Name)
}

// LinkExists reports whether the interface exists.
func (n *Net) LinkExists(name string) (bool, error) {
	_, ok, err := n.iface(name)
	return ok, err
}

// SetUp sets the interface administratively up (SIOCSIFFLAGS).
func (n *Net) SetUp(name string) error {
	ifi, err := n.mustIface(name)
	if err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if ifi.Flags&net.FlagUp != 0 {
		return nil
	}
	fd, err := socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	defer unix.Close(fd)
	req, err := ifreqName(ifi.Name)
	if err != nil {
		return err
	}
	if err := ioctl(fd, siocGIFFLAGS, unsafe.Pointer(&req)); err != nil {
		return fmt.Errorf("set %s up: read flags: %w", name, err)
	}
	if req, err = ifreqFlags(ifi.Name, ifreqFlagsOf(req)|iffUp); err != nil {
		return err
	}
	if err := ioctl(fd, siocSIFFLAGS, unsafe.Pointer(&req)); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// SetMTU sets the interface's MTU (SIOCSIFMTU).
func (n *Net) SetMTU(name string, mtu int) error {
	ifi, err := n.mustIface(name)
	if err != nil {
		return fmt.Errorf("set MTU of %s: %w", name, err)
	}
	if ifi.MTU == mtu {
		return nil
	}
	fd, err := socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return fmt.Errorf("set MTU of %s: %w", name, err)
	}
	defer unix.Close(fd)
	req := unix.IfreqMTU{MTU: int32(mtu)}
	copy(req.Name[:], ifi.Name)
	if err := unix.IoctlSetIfreqMTU(fd, &req); err != nil {
		return fmt.Errorf("set MTU of %s (%s) to %d: %w", name, ifi.Name, mtu, err)
	}
	return nil
}

// SetAlias labels the interface (in memory; see the package doc).
func (n *Net) SetAlias(name, alias string) error {
	if _, err := n.mustIface(name); err != nil {
		return fmt.Errorf("set alias of %s: %w", name, err)
	}
	n.mu.Lock()
	n.labels[name] = alias
	n.mu.Unlock()
	return nil
}

// addrsOf lists the interface's addresses with their prefix lengths.
func addrsOf(ifi *net.Interface) ([]netip.Prefix, error) {
	as, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ifi.Name, err)
	}
	var out []netip.Prefix
	for _, a := range as {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		addr, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		bits, _ := ipn.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap().WithZone(""), bits))
	}
	return out, nil
}

// EnsureAddrs makes want exactly the global addresses of the interface for
// each family present in want (link-local addresses and other families
// are left alone), and routes each address's prefix onto the interface:
// utun is point-to-point, so unlike a Linux TUN the kernel derives no
// subnet route from a netmask.
func (n *Net) EnsureAddrs(name string, want []netip.Prefix) error {
	for _, p := range want {
		if err := linuxnet.CheckInterfacePrefix(p); err != nil {
			return fmt.Errorf("ensure addresses of %s: %w", name, err)
		}
	}
	ifi, err := n.mustIface(name)
	if err != nil {
		return fmt.Errorf("ensure addresses of %s: %w", name, err)
	}
	have, err := addrsOf(ifi)
	if err != nil {
		return err
	}
	add, del := linuxnet.PlanAddrs(have, want)
	for _, p := range del {
		if err := n.subnetRoute(unix.RTM_DELETE, ifi, p); err != nil {
			return fmt.Errorf("remove the route of stale address %s from %s: %w", p, name, err)
		}
		if err := delAddr(ifi.Name, p.Addr()); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", p, name, err)
		}
	}
	for _, p := range add {
		if err := addAddr(ifi.Name, p); err != nil {
			return fmt.Errorf("add address %s to %s (%s): %w", p, name, ifi.Name, err)
		}
	}
	for _, p := range want {
		if err := n.subnetRoute(unix.RTM_ADD, ifi, p); err != nil {
			return fmt.Errorf("route %s onto %s: %w", p.Masked(), name, err)
		}
	}
	if len(del) == 0 {
		return nil
	}
	// A delete the kernel accepts without finding the address would leave
	// a stale source address behind; say so instead.
	now, err := addrsOf(ifi)
	if err != nil {
		return err
	}
	for _, p := range del {
		if slices.Contains(now, p) {
			return fmt.Errorf("address %s is still on %s (%s) after removing it", p, name, ifi.Name)
		}
	}
	return nil
}

func addAddr(ifname string, p netip.Prefix) error {
	if p.Addr().Is4() {
		req, err := ifaliasreq4(ifname, p)
		if err != nil {
			return err
		}
		return withSocket(unix.AF_INET, func(fd int) error { return ioctl(fd, siocAIFADDR, unsafe.Pointer(&req)) })
	}
	req, err := in6Aliasreq(ifname, p)
	if err != nil {
		return err
	}
	return withSocket(unix.AF_INET6, func(fd int) error { return ioctl(fd, siocAIFADDRIn6, unsafe.Pointer(&req)) })
}

func delAddr(ifname string, a netip.Addr) error {
	var err error
	if a.Is4() {
		req, rerr := ifreqAddr4(ifname, a)
		if rerr != nil {
			return rerr
		}
		err = withSocket(unix.AF_INET, func(fd int) error { return ioctl(fd, siocDIFADDR, unsafe.Pointer(&req)) })
	} else {
		req, rerr := in6Ifreq(ifname, a)
		if rerr != nil {
			return rerr
		}
		err = withSocket(unix.AF_INET6, func(fd int) error { return ioctl(fd, siocDIFADDRIn6, unsafe.Pointer(&req)) })
	}
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return nil
	}
	return err
}

// socket opens a descriptor that a child process never inherits (darwin
// has no SOCK_CLOEXEC; the daemon starts no children, so the window
// between the two calls is harmless).
func socket(family, typ, proto int) (int, error) {
	fd, err := unix.Socket(family, typ, proto)
	if err != nil {
		return -1, err
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

func withSocket(family int, f func(fd int) error) error {
	fd, err := socket(family, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return f(fd)
}

// ioctl issues a request whose argument is one of the layouts of
// layout.go. x/sys/unix has no generic pointer ioctl for darwin.
func ioctl(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// subnetRoute adds or deletes the route of an address's prefix onto the
// interface; a full-length address needs none.
func (n *Net) subnetRoute(op int, ifi *net.Interface, p netip.Prefix) error {
	if p.Bits() == p.Addr().BitLen() {
		return nil
	}
	r := linuxnet.Route{Dst: p.Masked(), Dev: ifi.Name}
	err := n.routeMessage(op, ifi, r)
	switch {
	case op == unix.RTM_ADD && errors.Is(err, unix.EEXIST):
		return nil
	case op == unix.RTM_DELETE && errors.Is(err, unix.ESRCH):
		return nil
	}
	return err
}

// EnsureRoute installs r, replacing a route to the same destination.
func (n *Net) EnsureRoute(r linuxnet.Route) error {
	if err := checkRoute(r); err != nil {
		return fmt.Errorf("ensure route: %w", err)
	}
	ifi, err := n.mustIface(r.Dev)
	if err != nil {
		return fmt.Errorf("ensure route %s dev %s: %w", r.Dst, r.Dev, err)
	}
	err = n.routeMessage(unix.RTM_ADD, ifi, r)
	if errors.Is(err, unix.EEXIST) {
		err = n.routeMessage(unix.RTM_CHANGE, ifi, r)
	}
	if err != nil {
		return fmt.Errorf("ensure route %s: %w", r, err)
	}
	return nil
}

// DeleteRoute deletes r; a missing route or device is not an error.
func (n *Net) DeleteRoute(r linuxnet.Route) error {
	if err := checkRoute(r); err != nil {
		return fmt.Errorf("delete route: %w", err)
	}
	ifi, ok, err := n.iface(r.Dev)
	if err != nil || !ok {
		return err
	}
	err = n.routeMessage(unix.RTM_DELETE, ifi, r)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

// routeMessage sends one PF_ROUTE request and returns the kernel's
// verdict (write(2) fails with the request's errno).
func (n *Net) routeMessage(op int, ifi *net.Interface, r linuxnet.Route) error {
	dst, msk := sockaddrOf(r.Dst.Masked().Addr()), sockaddrOf(mask(r.Dst.Bits(), r.Dst.Addr().BitLen()))
	var gw route.Addr = &route.LinkAddr{Index: ifi.Index, Name: ifi.Name}
	if r.Via.IsValid() {
		gw = sockaddrOf(r.Via)
	}
	addrs := make([]route.Addr, unix.RTAX_NETMASK+1)
	addrs[unix.RTAX_DST], addrs[unix.RTAX_GATEWAY], addrs[unix.RTAX_NETMASK] = dst, gw, msk
	m := route.RouteMessage{
		Version: unix.RTM_VERSION,
		Type:    op,
		Flags:   routeFlags(r),
		Index:   ifi.Index,
		ID:      uintptr(os.Getpid()),
		Seq:     int(n.seq.Add(1)),
		Addrs:   addrs,
	}
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	fd, err := socket(unix.AF_ROUTE, unix.SOCK_RAW, unix.AF_UNSPEC)
	if err != nil {
		return fmt.Errorf("open a routing socket: %w", err)
	}
	defer unix.Close(fd)
	// We only write: the kernel's echo of every routing change is not
	// needed, and a shut read side keeps it from queueing them.
	unix.Shutdown(fd, unix.SHUT_RD)
	_, err = unix.Write(fd, b)
	return err
}

func sockaddrOf(a netip.Addr) route.Addr {
	if a.Is4() {
		return &route.Inet4Addr{IP: a.As4()}
	}
	return &route.Inet6Addr{IP: a.As16()}
}

func addrOf(a route.Addr) (netip.Addr, []byte, bool) {
	switch a := a.(type) {
	case *route.Inet4Addr:
		return netip.AddrFrom4(a.IP), a.IP[:], true
	case *route.Inet6Addr:
		return netip.AddrFrom16(a.IP), a.IP[:], true
	}
	return netip.Addr{}, nil, false
}

// Routes lists the static unicast routes through dev, leaving out the
// prefix routes of its own addresses.
func (n *Net) Routes(dev string) ([]linuxnet.Route, error) {
	ifi, ok, err := n.iface(dev)
	if err != nil || !ok {
		return nil, err
	}
	own, err := addrsOf(ifi)
	if err != nil {
		return nil, err
	}
	raw, err := route.FetchRIB(unix.AF_UNSPEC, route.RIBTypeRoute, 0)
	if err != nil {
		return nil, fmt.Errorf("read the routing table: %w", err)
	}
	msgs, err := route.ParseRIB(route.RIBTypeRoute, raw)
	if err != nil {
		return nil, fmt.Errorf("parse the routing table: %w", err)
	}
	var rib []ribRoute
	for _, m := range msgs {
		rm, ok := m.(*route.RouteMessage)
		if !ok || rm.Index != ifi.Index || len(rm.Addrs) <= unix.RTAX_DST {
			continue
		}
		dst, _, ok := addrOf(rm.Addrs[unix.RTAX_DST])
		if !ok {
			continue
		}
		bits := dst.BitLen()
		if rm.Flags&rtfHost == 0 {
			bits = 0
			if len(rm.Addrs) > unix.RTAX_NETMASK && rm.Addrs[unix.RTAX_NETMASK] != nil {
				_, m, ok := addrOf(rm.Addrs[unix.RTAX_NETMASK])
				if !ok {
					continue
				}
				if bits, ok = maskBits(m); !ok {
					continue
				}
			}
		}
		r := ribRoute{Index: rm.Index, Flags: rm.Flags, Dst: netip.PrefixFrom(dst, bits)}
		if len(rm.Addrs) > unix.RTAX_GATEWAY {
			if via, _, ok := addrOf(rm.Addrs[unix.RTAX_GATEWAY]); ok {
				r.Via = via
			}
		}
		rib = append(rib, r)
	}
	return ownRoutes(rib, ifi.Index, dev, own), nil
}

// Links lists the interfaces whose name (the engine's name for our
// devices, the kernel's for everything else) starts with prefix.
func (n *Net) Links(prefix string) ([]linuxnet.LinkInfo, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	n.mu.Lock()
	engineName := map[string]string{} // kernel name → engine name
	for name := range n.names {
		if sys, ok := n.resolve(name); ok {
			engineName[sys] = name
		} else {
			delete(n.names, name)
		}
	}
	labels := map[string]string{}
	for k, v := range n.labels {
		if _, ok := n.resolve(k); ok {
			labels[k] = v
		} else {
			delete(n.labels, k)
		}
	}
	n.mu.Unlock()
	var out []linuxnet.LinkInfo
	for _, ifi := range ifs {
		name := ifi.Name
		if en, ok := engineName[name]; ok {
			name = en
		}
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		out = append(out, linuxnet.LinkInfo{
			Name:        name,
			Index:       ifi.Index,
			Kind:        kindOf(ifi.Name, ifi.Flags),
			Up:          ifi.Flags&net.FlagUp != 0,
			MTU:         ifi.MTU,
			PeerNetnsID: -1,
			Alias:       labels[name],
		})
	}
	return out, nil
}
