package winnet

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"golang.org/x/sys/windows"
)

// sockaddr.go lays out SOCKADDR_INET by hand; these fail to compile if
// x/sys/windows disagrees.
var (
	_ = [1]struct{}{}[afInet-windows.AF_INET]
	_ = [1]struct{}{}[afInet6-windows.AF_INET6]
	_ = [1]struct{}{}[sizeofSockaddrInet-unsafe.Sizeof(windows.RawSockaddrInet{})]
	_ = [1]struct{}{}[sizeofSockaddrInet-unsafe.Sizeof(windows.RawSockaddrInet6{})]
	_ = [1]struct{}{}[mibIPProtoNetMg-windows.MIB_IPPROTO_NETMGMT]
	_ = [1]struct{}{}[mibIPProtoLocal-windows.MIB_IPPROTO_LOCAL]
)

const (
	ifAdminStatusUp = 1
	// InterfaceAndOperStatusFlags bit of a filter (NDIS LWF) pseudo
	// interface: not an adapter anyone configures.
	ifFlagFilterInterface = 0x2
	// IpDadStatePreferred: the address is usable at once (no DAD).
	ipDadStatePreferred = 4
)

var errNoBridges = errors.New("bridges, veth pairs and network namespaces need Linux; this daemon runs on windows, where containers attach through HCN (windows_container handles)")

// Net configures Wintun adapters in the host's IP stack.
type Net struct {
	mu     sync.Mutex
	labels map[string]string // adapter alias → label (see the package doc)
}

// New returns a Net; it checks that the IP Helper calls it needs exist.
func New() (*Net, error) {
	for _, p := range []*windows.LazyProc{
		procInitializeUnicastIpAddressEntry, procCreateUnicastIpAddressEntry, procDeleteUnicastIpAddressEntry,
		procInitializeIpForwardEntry, procCreateIpForwardEntry2, procDeleteIpForwardEntry2,
		procSetIpInterfaceEntry, procSetIfEntry,
	} {
		if err := p.Find(); err != nil {
			return nil, fmt.Errorf("iphlpapi.dll lacks %s (Windows 10 / Server 2016 or later is required): %w", p.Name, err)
		}
	}
	return &Net{labels: map[string]string{}}, nil
}

// Close releases nothing: Net keeps no handles between calls.
func (n *Net) Close() {}

func (n *Net) EnsureBridge(linuxnet.BridgeSpec) error { return errNoBridges }
func (n *Net) Attach(linuxnet.AttachSpec) error       { return errNoBridges }
func (n *Net) Detach(string) error                    { return errNoBridges }

// interfaces reads the interface table, without the filter pseudo
// interfaces NDIS stacks on real adapters.
func interfaces() ([]windows.MibIfRow2, error) {
	var t *windows.MibIfTable2
	if err := windows.GetIfTable2Ex(windows.MibIfTableNormalWithoutStatistics, &t); err != nil {
		return nil, fmt.Errorf("read the interface table: %w", err)
	}
	defer windows.FreeMibTable(unsafe.Pointer(t))
	rows := unsafe.Slice(&t.Table[0], t.NumEntries)
	out := make([]windows.MibIfRow2, 0, len(rows))
	for _, r := range rows {
		if r.InterfaceAndOperStatusFlags&ifFlagFilterInterface != 0 {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func alias(r *windows.MibIfRow2) string { return windows.UTF16ToString(r.Alias[:]) }

// find looks an adapter up by alias (case-insensitively, as Windows
// compares aliases).
func find(name string) (*windows.MibIfRow2, bool, error) {
	rows, err := interfaces()
	if err != nil {
		return nil, false, err
	}
	for i := range rows {
		if strings.EqualFold(alias(&rows[i]), name) {
			return &rows[i], true, nil
		}
	}
	return nil, false, nil
}

func mustFind(name string) (*windows.MibIfRow2, error) {
	r, ok, err := find(name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("adapter %s does not exist (is its WireGuard device open?)", name)
	}
	return r, nil
}

// DeleteLink makes sure the adapter is gone. A Wintun adapter is removed
// when the process that created it closes it, so the only way to delete
// ours is to close its WireGuard device; an adapter still present is
// either ours and open, or someone else's, and is never touched.
func (n *Net) DeleteLink(name string) error {
	_, ok, err := find(name)
	if err != nil || !ok {
		return err
	}
	n.mu.Lock()
	_, ours := n.labels[name]
	n.mu.Unlock()
	if ours {
		return fmt.Errorf("adapter %s is open in this process; close its WireGuard device to remove it", name)
	}
	return fmt.Errorf("adapter %s is not ours; refusing to remove it", name)
}

// LinkExists reports whether an adapter with that alias exists.
func (n *Net) LinkExists(name string) (bool, error) {
	_, ok, err := find(name)
	return ok, err
}

// SetUp sets the adapter administratively up (SetIfEntry; a Wintun
// adapter is operationally up while wireguard-go holds its session) and
// turns IP forwarding on for it: an overlay adapter routes for the node's
// containers, and Windows decides forwarding per interface where Linux has
// one global switch.
func (n *Net) SetUp(name string) error {
	r, err := mustFind(name)
	if err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if _, err := enableForwarding(r.InterfaceLuid); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if r.AdminStatus == ifAdminStatusUp {
		return nil
	}
	row := windows.MibIfRow{Index: r.InterfaceIndex}
	if err := windows.GetIfEntry(&row); err != nil {
		return fmt.Errorf("set %s up: read the interface: %w", name, err)
	}
	row.AdminStatus = ifAdminStatusUp
	if err := setIfEntry(&row); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// bindWait bounds how long a new adapter may take until the IP stack has
// bound a family to it: Windows binds IPv4 and IPv6 to a fresh Wintun
// adapter asynchronously, and every IP Helper call on that family fails
// with ERROR_NOT_FOUND until it has.
const bindWait = 10 * time.Second

// ipInterface reads the adapter's IP interface of a family, waiting up to
// wait for the family to be bound; ok is false when it is not by then.
func ipInterface(luid uint64, family uint16, wait time.Duration) (row windows.MibIpInterfaceRow, ok bool, err error) {
	deadline := time.Now().Add(wait)
	for {
		row = windows.MibIpInterfaceRow{Family: family, InterfaceLuid: luid}
		err := windows.GetIpInterfaceEntry(&row)
		if err == nil {
			return row, true, nil
		}
		if !errors.Is(err, windows.ERROR_NOT_FOUND) {
			return row, false, fmt.Errorf("read the IP interface: %w", err)
		}
		if time.Now().After(deadline) {
			return row, false, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// boundFamilies waits until the IP stack has bound the adapter (see
// bindWait) and returns its IP interfaces: whichever family comes first,
// then the other once it follows shortly (a host with IPv6 disabled
// never binds it).
func boundFamilies(luid uint64) ([]windows.MibIpInterfaceRow, error) {
	var rows []windows.MibIpInterfaceRow
	for deadline := time.Now().Add(bindWait); ; time.Sleep(50 * time.Millisecond) {
		for _, family := range []uint16{afInet, afInet6} {
			row, ok, err := ipInterface(luid, family, 0)
			if err != nil {
				return nil, err
			}
			if ok {
				rows = append(rows, row)
			}
		}
		if len(rows) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("neither IPv4 nor IPv6 was bound to the adapter within %s", bindWait)
		}
	}
	if len(rows) == 1 {
		other := uint16(afInet6)
		if rows[0].Family == afInet6 {
			other = afInet
		}
		row, ok, err := ipInterface(luid, other, time.Second)
		if err != nil {
			return nil, err
		}
		if ok {
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// SetMTU sets the IP MTU of both families on the adapter (the one that
// applies to packets; a Wintun adapter's link MTU is fixed when it is
// created, from the same value).
func (n *Net) SetMTU(name string, mtu int) error {
	r, err := mustFind(name)
	if err != nil {
		return fmt.Errorf("set MTU of %s: %w", name, err)
	}
	rows, err := boundFamilies(r.InterfaceLuid)
	if err != nil {
		return fmt.Errorf("set MTU of %s: %w", name, err)
	}
	for _, row := range rows {
		family := row.Family
		if row.NlMtu == uint32(mtu) {
			continue
		}
		row.NlMtu = uint32(mtu)
		if family == afInet {
			// SetIpInterfaceEntry refuses an IPv4 row whose
			// SitePrefixLength is not zero (it is an IPv6 notion).
			row.SitePrefixLength = 0
		}
		if err := setIpInterfaceEntry(&row); err != nil {
			return fmt.Errorf("set MTU of %s to %d: %w", name, mtu, err)
		}
	}
	return nil
}

// SetAlias labels the adapter (in memory; see the package doc).
func (n *Net) SetAlias(name, label string) error {
	if _, err := mustFind(name); err != nil {
		return fmt.Errorf("set alias of %s: %w", name, err)
	}
	n.mu.Lock()
	n.labels[name] = label
	n.mu.Unlock()
	return nil
}

// unicastAddrs lists the adapter's unicast addresses.
func unicastAddrs(luid uint64) ([]windows.MibUnicastIpAddressRow, error) {
	var t *windows.MibUnicastIpAddressTable
	if err := windows.GetUnicastIpAddressTable(afUnspec, &t); err != nil {
		return nil, fmt.Errorf("read the address table: %w", err)
	}
	defer windows.FreeMibTable(unsafe.Pointer(t))
	var out []windows.MibUnicastIpAddressRow
	for _, r := range unsafe.Slice(&t.Table[0], t.NumEntries) {
		if r.InterfaceLuid == luid {
			out = append(out, r)
		}
	}
	return out, nil
}

func prefixOfRow(r *windows.MibUnicastIpAddressRow) (netip.Prefix, bool) {
	a, ok := addrOfSockaddrInet(*(*[sizeofSockaddrInet]byte)(unsafe.Pointer(&r.Address)))
	if !ok {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, int(r.OnLinkPrefixLength)), true
}

// EnsureAddrs makes want exactly the global unicast addresses of the
// adapter for each family present in want; link-local addresses and other
// families are left alone.
func (n *Net) EnsureAddrs(name string, want []netip.Prefix) error {
	for _, p := range want {
		if err := linuxnet.CheckInterfacePrefix(p); err != nil {
			return fmt.Errorf("ensure addresses of %s: %w", name, err)
		}
	}
	r, err := mustFind(name)
	if err != nil {
		return fmt.Errorf("ensure addresses of %s: %w", name, err)
	}
	rows, err := unicastAddrs(r.InterfaceLuid)
	if err != nil {
		return err
	}
	var have []netip.Prefix
	for i := range rows {
		if p, ok := prefixOfRow(&rows[i]); ok {
			have = append(have, p)
		}
	}
	add, del := linuxnet.PlanAddrs(have, want)
	for _, p := range del {
		row := addressRow(r.InterfaceLuid, p)
		if err := deleteUnicastIpAddressEntry(&row); err != nil && !errors.Is(err, windows.ERROR_NOT_FOUND) {
			return fmt.Errorf("remove stale address %s from %s: %w", p, name, err)
		}
	}
	for _, p := range add {
		var row windows.MibUnicastIpAddressRow
		if err := initializeUnicastIpAddressEntry(&row); err != nil {
			return err
		}
		row.InterfaceLuid = r.InterfaceLuid
		*(*[sizeofSockaddrInet]byte)(unsafe.Pointer(&row.Address)) = sockaddrInet(p.Addr())
		row.OnLinkPrefixLength = uint8(p.Bits())
		row.DadState = ipDadStatePreferred
		err := createUnicastIpAddressEntry(&row)
		if errors.Is(err, windows.ERROR_NOT_FOUND) {
			// The family is not bound to the new adapter yet.
			if _, ok, werr := ipInterface(r.InterfaceLuid, familyOf(p.Addr()), bindWait); werr != nil {
				return fmt.Errorf("add address %s to %s: %w", p, name, werr)
			} else if ok {
				err = createUnicastIpAddressEntry(&row)
			}
		}
		if err != nil && !errors.Is(err, windows.ERROR_OBJECT_ALREADY_EXISTS) {
			return fmt.Errorf("add address %s to %s: %w", p, name, err)
		}
	}
	return nil
}

func addressRow(luid uint64, p netip.Prefix) windows.MibUnicastIpAddressRow {
	row := windows.MibUnicastIpAddressRow{InterfaceLuid: luid, OnLinkPrefixLength: uint8(p.Bits())}
	*(*[sizeofSockaddrInet]byte)(unsafe.Pointer(&row.Address)) = sockaddrInet(p.Addr())
	return row
}

// routeRow2 is the forwarding-table row of r on the adapter.
func routeRow2(luid uint64, r linuxnet.Route) (windows.MibIpForwardRow2, error) {
	var row windows.MibIpForwardRow2
	if err := initializeIpForwardEntry(&row); err != nil {
		return row, err
	}
	row.InterfaceLuid = luid
	dst := r.Dst.Masked()
	*(*[sizeofSockaddrInet]byte)(unsafe.Pointer(&row.DestinationPrefix.Prefix)) = sockaddrInet(dst.Addr())
	row.DestinationPrefix.PrefixLength = uint8(dst.Bits())
	// An on-link route has an unspecified next hop of the route's family.
	hop := r.Via
	if !hop.IsValid() {
		hop = netip.IPv6Unspecified()
		if dst.Addr().Is4() {
			hop = netip.IPv4Unspecified()
		}
	}
	*(*[sizeofSockaddrInet]byte)(unsafe.Pointer(&row.NextHop)) = sockaddrInet(hop)
	row.Protocol = mibIPProtoNetMg
	row.Metric = 0 // the interface metric alone decides
	return row, nil
}

// EnsureRoute installs r; a route that already exists is left as it is.
func (n *Net) EnsureRoute(r linuxnet.Route) error {
	if err := checkRoute(r); err != nil {
		return fmt.Errorf("ensure route: %w", err)
	}
	a, err := mustFind(r.Dev)
	if err != nil {
		return fmt.Errorf("ensure route %s dev %s: %w", r.Dst, r.Dev, err)
	}
	row, err := routeRow2(a.InterfaceLuid, r)
	if err != nil {
		return err
	}
	if err := createIpForwardEntry2(&row); err != nil && !errors.Is(err, windows.ERROR_OBJECT_ALREADY_EXISTS) {
		return fmt.Errorf("ensure route %s: %w", r, err)
	}
	return nil
}

// DeleteRoute deletes r; a missing route or adapter is not an error.
func (n *Net) DeleteRoute(r linuxnet.Route) error {
	if err := checkRoute(r); err != nil {
		return fmt.Errorf("delete route: %w", err)
	}
	a, ok, err := find(r.Dev)
	if err != nil || !ok {
		return err
	}
	row, err := routeRow2(a.InterfaceLuid, r)
	if err != nil {
		return err
	}
	if err := deleteIpForwardEntry2(&row); err != nil && !errors.Is(err, windows.ERROR_NOT_FOUND) {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

// Routes lists the static routes through the adapter.
func (n *Net) Routes(dev string) ([]linuxnet.Route, error) {
	a, ok, err := find(dev)
	if err != nil || !ok {
		return nil, err
	}
	var t *windows.MibIpForwardTable2
	if err := windows.GetIpForwardTable2(afUnspec, &t); err != nil {
		return nil, fmt.Errorf("read the routing table: %w", err)
	}
	defer windows.FreeMibTable(unsafe.Pointer(t))
	var rows []routeRow
	for _, r := range t.Rows() {
		if r.InterfaceLuid != a.InterfaceLuid {
			continue
		}
		dst, ok := addrOfSockaddrInet(*(*[sizeofSockaddrInet]byte)(unsafe.Pointer(&r.DestinationPrefix.Prefix)))
		if !ok {
			continue
		}
		hop, _ := addrOfSockaddrInet(*(*[sizeofSockaddrInet]byte)(unsafe.Pointer(&r.NextHop)))
		rows = append(rows, routeRow{
			LUID:     r.InterfaceLuid,
			Protocol: r.Protocol,
			Dst:      netip.PrefixFrom(dst, int(r.DestinationPrefix.PrefixLength)),
			NextHop:  hop,
		})
	}
	return ownRoutes(rows, a.InterfaceLuid, dev), nil
}

// Links lists the adapters whose alias starts with prefix.
func (n *Net) Links(prefix string) ([]linuxnet.LinkInfo, error) {
	rows, err := interfaces()
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	labels := make(map[string]string, len(n.labels))
	for k, v := range n.labels {
		labels[strings.ToLower(k)] = v
	}
	n.mu.Unlock()
	var out []linuxnet.LinkInfo
	present := map[string]bool{}
	for i := range rows {
		name := alias(&rows[i])
		present[strings.ToLower(name)] = true
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		out = append(out, linuxnet.LinkInfo{
			Name:        name,
			Index:       int(rows[i].InterfaceIndex),
			Kind:        kindOf(rows[i].Type),
			Up:          rows[i].AdminStatus == ifAdminStatusUp,
			MTU:         int(rows[i].Mtu),
			PeerNetnsID: -1,
			Alias:       labels[strings.ToLower(name)],
		})
	}
	// Labels of adapters that are gone (their device was closed) go too.
	n.mu.Lock()
	for k := range n.labels {
		if !present[strings.ToLower(k)] {
			delete(n.labels, k)
		}
	}
	n.mu.Unlock()
	return out, nil
}

// enableForwarding turns IP forwarding on for every family bound to the
// interface; changed is true when it was off for any.
func enableForwarding(luid uint64) (changed bool, err error) {
	for _, family := range []uint16{afInet, afInet6} {
		row := windows.MibIpInterfaceRow{Family: family, InterfaceLuid: luid}
		if err := windows.GetIpInterfaceEntry(&row); err != nil {
			if errors.Is(err, windows.ERROR_NOT_FOUND) {
				continue
			}
			return changed, fmt.Errorf("read the IP interface: %w", err)
		}
		if row.ForwardingEnabled != 0 {
			continue
		}
		row.ForwardingEnabled = 1
		if family == afInet {
			row.SitePrefixLength = 0
		}
		if err := setIpInterfaceEntry(&row); err != nil {
			return changed, fmt.Errorf("enable IP forwarding: %w", err)
		}
		changed = true
	}
	return changed, nil
}

// EnableForwardingFor turns IP forwarding on for the interfaces that hold
// address p (address and prefix length exactly), and returns their
// aliases. HCN gives an Internal network's host vNIC the network's gateway
// address; forwarding on it is what lets containers behind the network
// reach the overlay.
func EnableForwardingFor(p netip.Prefix) ([]string, error) {
	var t *windows.MibUnicastIpAddressTable
	if err := windows.GetUnicastIpAddressTable(afUnspec, &t); err != nil {
		return nil, fmt.Errorf("read the address table: %w", err)
	}
	var luids []uint64
	for _, r := range unsafe.Slice(&t.Table[0], t.NumEntries) {
		if q, ok := prefixOfRow(&r); ok && q == p && !slices.Contains(luids, r.InterfaceLuid) {
			luids = append(luids, r.InterfaceLuid)
		}
	}
	windows.FreeMibTable(unsafe.Pointer(t))
	if len(luids) == 0 {
		return nil, fmt.Errorf("no interface holds %s", p)
	}
	rows, err := interfaces()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, luid := range luids {
		if _, err := enableForwarding(luid); err != nil {
			return names, err
		}
		for i := range rows {
			if rows[i].InterfaceLuid == luid {
				names = append(names, alias(&rows[i]))
			}
		}
	}
	return names, nil
}
