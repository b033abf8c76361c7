package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// DefaultTable is the name of our inet table when Spec.Table is empty.
const DefaultTable = "zlayer_overlay"

// Spec is the desired content of our table. The zero value (apart from the
// table name default) is valid and yields a table with empty sets and no
// NAT, clamping or isolation.
type Spec struct {
	Table         string         // default DefaultTable
	OverlayIfaces []string       // global + dedicated WireGuard devices
	Bridges       []string       // our per-service bridges
	Sources       []netip.Prefix // container subnets + node slice (masquerade candidates)
	Cluster       []netip.Prefix // cluster CIDR(s): never masqueraded as destination
	Masquerade    bool           // egress NAT on/off (--masquerade=false)
	ClampMSS      bool           // TCP MSS clamp to path MTU on overlay devices and bridges

	// Dedicated pairs each dedicated service device with its service's
	// bridge (both also listed above). A dedicated device reaches only its
	// own bridge; the other overlay devices (the global one) reach every
	// bridge and every container link.
	Dedicated []Dedicated
	// ContainerLinks is the name prefix of the host ends of containers'
	// join_global links ("zl-v"), which carry node-slice addresses outside
	// any bridge; empty when there are none. Bridges and overlay devices
	// whose names happen to share the prefix are still treated as what
	// they are.
	ContainerLinks string
	// Isolate drops forwarded traffic into a bridge or a container link
	// unless it comes from an overlay device allowed there, the same
	// bridge, a container link, or belongs to a connection already
	// established (replies to what a container opened). Without it the
	// forward chain only counts (--isolate=false).
	Isolate bool
	// DNS are the embedded DNS server's listeners. An input-chain rule
	// drops queries to them (UDP and TCP) that arrive on any interface but
	// loopback, a bridge, an overlay device or a container link: defence
	// in depth, the server checks the arrival interface itself.
	DNS []netip.AddrPort
}

// Dedicated is a dedicated service device and the bridge of its service.
type Dedicated struct {
	Device, Bridge string
}

// State is what Inspect found in the kernel.
type State struct {
	Table   string
	Present bool
	Chains  []ChainState
	Rules   int // total over all chains
	Sets    []SetState
}

// ChainState describes one chain of our table.
type ChainState struct {
	Name     string
	Type     string // "filter", "nat", ... ("" for a regular chain)
	Hook     string // "forward", "postrouting", ... ("" for a regular chain)
	Priority int32
	Policy   string // "accept" or "drop" ("" for a regular chain)
	Rules    []RuleState
}

// RuleState is one rule's comment and counter, in chain order.
type RuleState struct {
	Comment string
	Packets uint64
	Bytes   uint64
}

// SetState describes one named set. For interval (address) sets Elements
// counts address ranges, not the kernel's start/end markers.
type SetState struct {
	Name     string
	Type     string // "ifname", "ipv4_addr", "ipv6_addr"
	Elements int
}

// Foreign lists netfilter state owned by others that affects our traffic.
// Entries are "family table" or "family table chain" strings, for logs.
type Foreign struct {
	DockerChains      []string // iptables(-nft) chains named DOCKER*
	DockerTables      []string // tables of Docker's native nftables backend
	FirewalldTables   []string // firewalld's tables
	DropForwardChains []string // other tables' forward base chains with policy drop
	LegacyIPTables    []string // x_tables (iptables-legacy) tables, e.g. "ip filter"
}

// Any reports whether anything foreign was found.
func (f Foreign) Any() bool {
	return len(f.DockerChains)+len(f.DockerTables)+len(f.FirewalldTables)+
		len(f.DropForwardChains)+len(f.LegacyIPTables) > 0
}

// Hints turns findings into operator advice for the daemon's log. It never
// suggests that we change those tables ourselves: we do not.
func (f Foreign) Hints() []string {
	var hints []string
	docker := len(f.DockerChains) > 0 || len(f.DockerTables) > 0
	switch {
	case docker && len(f.DropForwardChains) > 0:
		hints = append(hints, fmt.Sprintf(
			"Docker's forward chain (%s) drops by default, so traffic between zlayer bridges and the overlay is dropped there "+
				"whatever zlayer's own table accepts; allow it in Docker's DOCKER-USER chain, for example "+
				"`iptables -I DOCKER-USER -i zl-+ -j ACCEPT` and `iptables -I DOCKER-USER -o zl-+ -j ACCEPT` "+
				"(zlayer-overlayd never edits tables it does not own)",
			strings.Join(f.DropForwardChains, ", ")))
	case docker:
		hints = append(hints, "Docker's netfilter rules are present ("+strings.Join(append(slices.Clone(f.DockerChains), f.DockerTables...), ", ")+
			"); if Docker later sets its FORWARD policy to drop, allow zl-* interfaces in DOCKER-USER")
	case len(f.DropForwardChains) > 0:
		hints = append(hints, fmt.Sprintf(
			"forward chain(s) %s have policy drop; traffic between zlayer bridges and the overlay needs accept rules "+
				"for the zl-* interfaces there (zlayer-overlayd never edits tables it does not own)",
			strings.Join(f.DropForwardChains, ", ")))
	}
	if len(f.FirewalldTables) > 0 {
		hints = append(hints, "firewalld is active ("+strings.Join(f.FirewalldTables, ", ")+
			"); put the zl-* interfaces in a zone that allows forwarding (for example the trusted zone) or firewalld may reject overlay traffic")
	}
	if len(f.LegacyIPTables) > 0 {
		hints = append(hints, "iptables-legacy tables are loaded ("+strings.Join(f.LegacyIPTables, ", ")+
			"); their rules are invisible to nft but still filter packets: check them with `iptables-legacy-save` if overlay traffic is dropped")
	}
	return hints
}

// addrRange is an inclusive address range of one family.
type addrRange struct{ first, last netip.Addr }

// desired is a validated, canonical Spec: names sorted and deduplicated,
// prefixes merged into disjoint, non-adjacent ranges per family. Two Specs
// that mean the same thing normalise to equal values, which is what makes
// Drifted insensitive to ordering and duplicates.
type desired struct {
	table      string
	overlay    []string
	global     []string // overlay devices that are not dedicated to a service
	bridges    []string
	paths      [][2]string // (in, out) device pairs allowed into a bridge, sorted
	clamp      []string    // overlay ∪ bridges: devices whose forwarded SYNs we clamp
	links      string      // container link name prefix
	sources4   []addrRange
	sources6   []addrRange
	cluster4   []addrRange
	cluster6   []addrRange
	dns4, dns6 []netip.AddrPort
	masquerade bool
	clampMSS   bool
	isolate    bool
}

func (s Spec) normalize() (desired, error) {
	d := desired{table: s.Table, masquerade: s.Masquerade, clampMSS: s.ClampMSS, isolate: s.Isolate}
	if d.table == "" {
		d.table = DefaultTable
	}
	if err := validTableName(d.table); err != nil {
		return desired{}, err
	}
	var err error
	if d.overlay, err = normalizeIfaces("OverlayIfaces", s.OverlayIfaces); err != nil {
		return desired{}, err
	}
	if d.bridges, err = normalizeIfaces("Bridges", s.Bridges); err != nil {
		return desired{}, err
	}
	for _, name := range d.overlay {
		if _, dup := slices.BinarySearch(d.bridges, name); dup {
			return desired{}, fmt.Errorf("firewall: interface %q is listed both as an overlay device and as a bridge; a device is one or the other", name)
		}
	}
	d.clamp = slices.Concat(d.overlay, d.bridges)
	slices.Sort(d.clamp)
	if d.global, d.paths, err = normalizePaths(s.Dedicated, d.overlay, d.bridges); err != nil {
		return desired{}, err
	}
	if s.ContainerLinks != "" {
		if err := validIfname(s.ContainerLinks); err != nil {
			return desired{}, fmt.Errorf("firewall: Spec.ContainerLinks prefix %q %v", s.ContainerLinks, err)
		}
		d.links = s.ContainerLinks
	}
	if d.dns4, d.dns6, err = normalizeListeners(s.DNS); err != nil {
		return desired{}, err
	}
	if d.sources4, d.sources6, err = normalizePrefixes("Sources", s.Sources); err != nil {
		return desired{}, err
	}
	if d.cluster4, d.cluster6, err = normalizePrefixes("Cluster", s.Cluster); err != nil {
		return desired{}, err
	}
	return d, nil
}

// validTableName keeps names to what `nft list table inet NAME` accepts
// unquoted, so operators can always type the name we report.
func validTableName(name string) error {
	if len(name) > 64 {
		return fmt.Errorf("firewall: table name %q is longer than 64 bytes", name)
	}
	for i, r := range name {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_'
		if i == 0 && !letter {
			return fmt.Errorf("firewall: table name %q must start with a letter or underscore", name)
		}
		if !letter && !(r >= '0' && r <= '9') && r != '-' && r != '.' {
			return fmt.Errorf("firewall: table name %q may contain only letters, digits, '_', '-' and '.'", name)
		}
	}
	return nil
}

// validIfname applies the kernel's dev_valid_name rules, so a name we accept
// is one a device can actually have.
func validIfname(name string) error {
	switch {
	case name == "":
		return errors.New("is empty")
	case len(name) > 15:
		return fmt.Errorf("is %d bytes long; Linux interface names have at most 15", len(name))
	case name == "." || name == "..":
		return errors.New("is not a valid interface name")
	case strings.ContainsAny(name, "/: \t\n\r\v\f\x00"):
		return errors.New("contains '/', ':', NUL or whitespace, which Linux interface names cannot")
	}
	return nil
}

func normalizeIfaces(field string, names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if err := validIfname(n); err != nil {
			return nil, fmt.Errorf("firewall: Spec.%s entry %q %v", field, n, err)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// normalizePaths works out which devices may forward into which bridge:
// every overlay device that is not dedicated reaches every bridge, a
// dedicated one only its service's, and each bridge itself (routed
// hairpin traffic, and bridged traffic when br_netfilter hands it to us).
func normalizePaths(dedicated []Dedicated, overlay, bridges []string) (global []string, paths [][2]string, err error) {
	owner := map[string]string{}
	for _, d := range dedicated {
		if _, ok := slices.BinarySearch(overlay, d.Device); !ok {
			return nil, nil, fmt.Errorf("firewall: Spec.Dedicated device %q is not in Spec.OverlayIfaces", d.Device)
		}
		if _, ok := slices.BinarySearch(bridges, d.Bridge); !ok {
			return nil, nil, fmt.Errorf("firewall: Spec.Dedicated bridge %q (of device %q) is not in Spec.Bridges", d.Bridge, d.Device)
		}
		if b, dup := owner[d.Device]; dup && b != d.Bridge {
			return nil, nil, fmt.Errorf("firewall: Spec.Dedicated gives device %q two bridges, %q and %q; a dedicated device serves one service", d.Device, b, d.Bridge)
		}
		owner[d.Device] = d.Bridge
		paths = append(paths, [2]string{d.Device, d.Bridge})
	}
	for _, o := range overlay {
		if _, ok := owner[o]; ok {
			continue
		}
		global = append(global, o)
		for _, b := range bridges {
			paths = append(paths, [2]string{o, b})
		}
	}
	for _, b := range bridges {
		paths = append(paths, [2]string{b, b})
	}
	slices.SortFunc(paths, func(a, b [2]string) int {
		if c := strings.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return strings.Compare(a[1], b[1])
	})
	return global, slices.Compact(paths), nil
}

// normalizeListeners splits DNS listeners by family, sorted and
// deduplicated.
func normalizeListeners(listeners []netip.AddrPort) (v4, v6 []netip.AddrPort, err error) {
	for _, l := range listeners {
		a := l.Addr()
		switch {
		case !a.IsValid() || a.IsUnspecified():
			return nil, nil, fmt.Errorf("firewall: Spec.DNS listener %q has no address; list the addresses the server listens on", l)
		case a.Is4In6():
			return nil, nil, fmt.Errorf("firewall: Spec.DNS listener %s is an IPv4-mapped IPv6 address; give it in IPv4 form", l)
		case a.Zone() != "":
			return nil, nil, fmt.Errorf("firewall: Spec.DNS listener %s has a zone, which our sets cannot hold", l)
		case l.Port() == 0:
			return nil, nil, fmt.Errorf("firewall: Spec.DNS listener %s has port 0; give the port it is bound to", l)
		case a.Is4():
			v4 = append(v4, l)
		default:
			v6 = append(v6, l)
		}
	}
	cmp := func(a, b netip.AddrPort) int { return a.Compare(b) }
	slices.SortFunc(v4, cmp)
	slices.SortFunc(v6, cmp)
	return slices.Compact(v4), slices.Compact(v6), nil
}

func normalizePrefixes(field string, prefixes []netip.Prefix) (v4, v6 []addrRange, err error) {
	var p4, p6 []netip.Prefix
	for _, p := range prefixes {
		switch {
		case !p.IsValid():
			return nil, nil, fmt.Errorf("firewall: Spec.%s contains an invalid prefix %q", field, p)
		case p.Addr().Is4In6():
			return nil, nil, fmt.Errorf("firewall: Spec.%s prefix %s is an IPv4-mapped IPv6 prefix; give it in IPv4 form", field, p)
		case p.Addr().Zone() != "":
			return nil, nil, fmt.Errorf("firewall: Spec.%s prefix %s has a zone, which prefixes cannot", field, p)
		case p.Addr().Is4():
			p4 = append(p4, p.Masked())
		default:
			p6 = append(p6, p.Masked())
		}
	}
	return mergePrefixes(p4), mergePrefixes(p6), nil
}

// mergePrefixes returns the union of prefixes (all of one family) as sorted
// ranges that neither overlap nor touch. The kernel's interval sets reject
// overlapping elements, and a node slice routinely contains its container
// subnets, so merging is required, not cosmetic.
func mergePrefixes(prefixes []netip.Prefix) []addrRange {
	if len(prefixes) == 0 {
		return nil
	}
	ranges := make([]addrRange, len(prefixes))
	for i, p := range prefixes {
		ranges[i] = addrRange{first: p.Addr(), last: lastAddr(p)}
	}
	slices.SortFunc(ranges, func(a, b addrRange) int { return a.first.Compare(b.first) })
	out := ranges[:1]
	for _, r := range ranges[1:] {
		cur := &out[len(out)-1]
		next := cur.last.Next() // invalid when cur ends at the family's last address
		if !next.IsValid() || r.first.Compare(next) <= 0 {
			if r.last.Compare(cur.last) > 0 {
				cur.last = r.last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// lastAddr is the highest address inside a masked prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for bit := p.Bits(); bit < len(b)*8; bit++ {
		b[bit/8] |= 0x80 >> (bit % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
