package firewall

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Names of the objects inside our table. They are part of the operator
// interface (`nft list set inet zlayer_overlay bridges`), so keep them stable.
const (
	setOverlay  = "overlay_ifaces"
	setBridges  = "bridges"
	setClamp    = "mss_clamp_ifaces"
	setSources4 = "sources_v4"
	setSources6 = "sources_v6"
	setCluster4 = "cluster_v4"
	setCluster6 = "cluster_v6"
	setGlobal   = "global_ifaces"
	setPaths    = "bridge_paths"
	setDNS4     = "dns_v4"
	setDNS6     = "dns_v6"

	chainNAT     = "postrouting"
	chainForward = "forward"
	chainClamp   = "mss_clamp"
	chainInput   = "input"
)

// Key types of the concatenated sets: an (in, out) device pair, and a DNS
// listener with the transport protocol (address . protocol . port).
var (
	typePath = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName)
	typeDNS4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typeDNS6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
)

// ruleset is a table's content. build produces the desired one and
// readTable the kernel's; both carry the same images (the netlink encoding
// the kernel reports back), which Drifted compares.
type ruleset struct {
	present bool
	table   *nftables.Table
	chains  []*nftables.Chain
	sets    []setImage
	rules   map[string][]ruleImage // by chain name, in chain order

	// What Apply sends; only in a built ruleset.
	nftSets  []*nftables.Set
	nftElems map[string][]nftables.SetElement // by set name
	nftRules []*nftables.Rule                 // chain by chain, in order
}

// build turns a normalized spec into the objects Apply installs.
func build(d desired) (ruleset, error) {
	t := &nftables.Table{Name: d.table, Family: nftables.TableFamilyINet}
	rs := ruleset{
		present:  true,
		table:    t,
		rules:    map[string][]ruleImage{},
		nftElems: map[string][]nftables.SetElement{},
	}

	// Set IDs only link lookups to sets created in the same batch. We
	// assign them ourselves: the library's automatic allocation uses an
	// unsynchronised package counter, which would race between concurrent
	// calls.
	sets := map[string]*nftables.Set{}
	addSet := func(name string, keyType nftables.SetDatatype, interval bool, elems []nftables.SetElement) {
		s := &nftables.Set{
			Table:    t,
			ID:       uint32(len(rs.nftSets) + 1),
			Name:     name,
			KeyType:  keyType,
			Interval: interval,
		}
		if keyType.Name == nftables.TypeIFName.Name {
			// nft prints interface names only when the set says its
			// key is in host byte order, as nft itself records it.
			s.KeyByteOrder = binaryutil.NativeEndian
		}
		rs.nftSets = append(rs.nftSets, s)
		rs.nftElems[name] = elems
		rs.sets = append(rs.sets, imageOfSet(s, elems))
		sets[name] = s
	}
	addSet(setOverlay, nftables.TypeIFName, false, ifnameElements(d.overlay))
	addSet(setGlobal, nftables.TypeIFName, false, ifnameElements(d.global))
	addSet(setBridges, nftables.TypeIFName, false, ifnameElements(d.bridges))
	addSet(setPaths, typePath, false, pathElements(d.paths))
	addSet(setSources4, nftables.TypeIPAddr, true, intervalElements(d.sources4, 4))
	addSet(setSources6, nftables.TypeIP6Addr, true, intervalElements(d.sources6, 16))
	addSet(setCluster4, nftables.TypeIPAddr, true, intervalElements(d.cluster4, 4))
	addSet(setCluster6, nftables.TypeIP6Addr, true, intervalElements(d.cluster6, 16))
	if d.clampMSS {
		addSet(setClamp, nftables.TypeIFName, false, ifnameElements(d.clamp))
	}
	if len(d.dns4)+len(d.dns6) > 0 {
		addSet(setDNS4, typeDNS4, false, listenerElements(d.dns4))
		addSet(setDNS6, typeDNS6, false, listenerElements(d.dns6))
	}

	accept := nftables.ChainPolicyAccept
	addChain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		c := &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept}
		rs.chains = append(rs.chains, c)
		return c
	}
	addRule := func(c *nftables.Chain, comment string, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		rs.nftRules = append(rs.nftRules, &nftables.Rule{
			Table:    t,
			Chain:    c,
			Exprs:    all,
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
		})
	}
	in := func(key expr.MetaKey, set string) []expr.Any { return ifaceLookup(key, sets[set], false) }
	notIn := func(key expr.MetaKey, set string) []expr.Any { return ifaceLookup(key, sets[set], true) }
	counter := []expr.Any{&expr.Counter{}}
	acceptVerdict := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}

	// Masquerade container egress that leaves through anything but our own
	// devices (the uplink, typically), unless it is headed into the cluster:
	// cluster peers must see real container addresses.
	if d.masquerade {
		nat := addChain(chainNAT, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
		masq := []expr.Any{&expr.Masq{}}
		addRule(nat, "masquerade IPv4 container egress",
			nfproto(unix.NFPROTO_IPV4),
			addrLookup(4, true, sets[setSources4], false),
			addrLookup(4, false, sets[setCluster4], true),
			notIn(expr.MetaKeyOIFNAME, setOverlay),
			notIn(expr.MetaKeyOIFNAME, setBridges),
			counter, masq)
		addRule(nat, "masquerade IPv6 container egress",
			nfproto(unix.NFPROTO_IPV6),
			addrLookup(16, true, sets[setSources6], false),
			addrLookup(16, false, sets[setCluster6], true),
			notIn(expr.MetaKeyOIFNAME, setOverlay),
			notIn(expr.MetaKeyOIFNAME, setBridges),
			counter, masq)
	}

	// The forward chain counts our traffic classes and, with isolation on,
	// decides what may enter a container: a bridge or a container link
	// (join_global) is entered only by what comes from the overlay, from
	// the same bridge, from a container's own join_global link, or belongs
	// to a connection already established. Everything else, above all
	// what arrives from the underlay of a host that routes the cluster
	// CIDR via this node, is dropped here, in our own table. The node's
	// own traffic never passes this hook (output, not forward).
	fwd := addChain(chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	dropVerdict := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	addRule(fwd, "established and related", ctEstablishedOrRelated(), counter, acceptVerdict)
	addRule(fwd, "bridge to overlay", in(expr.MetaKeyIIFNAME, setBridges), in(expr.MetaKeyOIFNAME, setOverlay), counter, acceptVerdict)
	addRule(fwd, "overlay or same bridge to bridge", pathLookup(sets[setPaths]), counter, acceptVerdict)
	// A name prefix, not a set: container links come and go with every
	// attach, and the table is rebuilt only when services change. The
	// exclusions keep a bridge or overlay device whose name shares the
	// prefix what it is.
	link := func(key expr.MetaKey) []expr.Any {
		return slices.Concat(namePrefix(key, d.links, false), notIn(key, setBridges), notIn(key, setOverlay))
	}
	if d.links != "" {
		addRule(fwd, "container link to bridge", link(expr.MetaKeyIIFNAME), in(expr.MetaKeyOIFNAME, setBridges), counter, acceptVerdict)
	}
	if d.isolate {
		addRule(fwd, "anything else into a bridge", in(expr.MetaKeyOIFNAME, setBridges), counter, dropVerdict)
	}
	if d.links != "" {
		addRule(fwd, "global overlay to container link", in(expr.MetaKeyIIFNAME, setGlobal), link(expr.MetaKeyOIFNAME), counter, acceptVerdict)
		addRule(fwd, "container link to container link", link(expr.MetaKeyIIFNAME), link(expr.MetaKeyOIFNAME), counter, acceptVerdict)
		if d.isolate {
			addRule(fwd, "anything else into a container link", link(expr.MetaKeyOIFNAME), counter, dropVerdict)
		}
	}

	// DNS listeners take queries only from the interfaces containers,
	// peers and the node itself use. The server checks the arrival
	// interface itself; this rule keeps the packets away from it.
	if len(d.dns4)+len(d.dns6) > 0 {
		input := addChain(chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
		var ours []expr.Any
		ours = append(ours, namePrefix(expr.MetaKeyIIFNAME, "lo\x00", true)...)
		ours = append(ours, notIn(expr.MetaKeyIIFNAME, setBridges)...)
		ours = append(ours, notIn(expr.MetaKeyIIFNAME, setOverlay)...)
		if d.links != "" {
			ours = append(ours, namePrefix(expr.MetaKeyIIFNAME, d.links, true)...)
		}
		addRule(input, "DNS to our listeners from elsewhere (IPv4)", nfproto(unix.NFPROTO_IPV4), listenerLookup(4, sets[setDNS4]), ours, counter, dropVerdict)
		addRule(input, "DNS to our listeners from elsewhere (IPv6)", nfproto(unix.NFPROTO_IPV6), listenerLookup(16, sets[setDNS6]), ours, counter, dropVerdict)
	}

	// Clamp the MSS of forwarded SYN and SYN-ACK segments to the route MTU
	// whenever they enter or leave one of our devices, so that a 1500-byte
	// container talking through a 1420-byte tunnel (or a low-MTU uplink)
	// never depends on ICMP "fragmentation needed" getting through. The
	// kernel only ever lowers an MSS here. The second rule skips packets
	// the first already clamped so each SYN is counted once.
	if d.clampMSS {
		clamp := addChain(chainClamp, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityMangle)
		addRule(clamp, "clamp MSS leaving our devices", in(expr.MetaKeyOIFNAME, setClamp), tcpSyn(), counter, setMSSToRouteMTU())
		addRule(clamp, "clamp MSS entering from our devices", in(expr.MetaKeyIIFNAME, setClamp), notIn(expr.MetaKeyOIFNAME, setClamp), tcpSyn(), counter, setMSSToRouteMTU())
	}
	for _, r := range rs.nftRules {
		img, err := imageOfRule(t.Family, r)
		if err != nil {
			return ruleset{}, err
		}
		rs.rules[r.Chain.Name] = append(rs.rules[r.Chain.Name], img)
	}
	return rs, nil
}

// ifnameElements encodes names the way the kernel compares them: a
// fixed 16-byte field padded with NULs.
func ifnameElements(names []string) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(names))
	for _, n := range names {
		key := make([]byte, nftables.TypeIFName.Bytes)
		copy(key, n)
		out = append(out, nftables.SetElement{Key: key})
	}
	return out
}

// pathElements encodes (in, out) device pairs as the concatenation of two
// padded names.
func pathElements(paths [][2]string) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(paths))
	for _, p := range paths {
		key := make([]byte, typePath.Bytes)
		copy(key, p[0])
		copy(key[nftables.TypeIFName.Bytes:], p[1])
		out = append(out, nftables.SetElement{Key: key})
	}
	return out
}

// listenerElements encodes each listener twice, for UDP and TCP, as
// address . protocol . port, every part padded to 4 bytes as the kernel's
// registers hold it.
func listenerElements(listeners []netip.AddrPort) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(listeners))
	for _, l := range listeners {
		for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			key := l.Addr().AsSlice()
			key = append(key, proto, 0, 0, 0)
			key = binary.BigEndian.AppendUint16(key, l.Port())
			key = append(key, 0, 0)
			out = append(out, nftables.SetElement{Key: key})
		}
	}
	return out
}

// intervalElements encodes disjoint ranges the way nft does for interval
// sets: a start element per range and an interval-end element at the
// address after it (omitted when the range reaches the family's last
// address), preceded by an end element at the zero address when the first
// range does not start there.
func intervalElements(ranges []addrRange, size int) []nftables.SetElement {
	var out []nftables.SetElement
	if len(ranges) > 0 && !ranges[0].first.IsUnspecified() {
		out = append(out, nftables.SetElement{Key: make([]byte, size), IntervalEnd: true})
	}
	for _, r := range ranges {
		out = append(out, nftables.SetElement{Key: r.first.AsSlice()})
		if next := r.last.Next(); next.IsValid() {
			out = append(out, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

func nfproto(family byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
	}
}

func ifaceLookup(key expr.MetaKey, set *nftables.Set, invert bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: invert},
	}
}

// pathLookup is `iifname . oifname @set`.
func pathLookup(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

// listenerLookup is `ip daddr . meta l4proto . th dport @set` (ip6 for
// size 16); the protocol is part of the key so that a packet of another
// protocol never has bytes of its header read as a port.
func listenerLookup(size int, set *nftables.Set) []expr.Any {
	offset := uint32(16) // IPv4 daddr
	if size == 16 {
		offset = 24 // IPv6 daddr
	}
	proto := reg32(size / 4)
	return []expr.Any{
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(size)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: proto},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg32(size/4 + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

// reg32 names the i-th 32-bit register, where concatenations put their
// parts, the way the kernel reports it back: a 32-bit register that starts
// a 128-bit one under the latter's number (NFT_REG_1..4), others as
// NFT_REG32_00 + i. Using the same form keeps Drifted exact.
func reg32(i int) uint32 {
	if i%4 == 0 {
		return uint32(i/4 + 1)
	}
	return uint32(unix.NFT_REG32_00 + i)
}

// namePrefix is `iifname "prefix*"` (or `!=`): a compare of the name's
// first bytes only, which is how nft matches wildcard interface names.
func namePrefix(key expr.MetaKey, prefix string, invert bool) []expr.Any {
	op := expr.CmpOpEq
	if invert {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(prefix)},
	}
}

// nameIs is `iifname "name"` (or `!=`): the whole padded name.
func nameIs(key expr.MetaKey, name string, invert bool) []expr.Any {
	b := make([]byte, nftables.TypeIFName.Bytes)
	copy(b, name)
	return namePrefix(key, string(b), invert)
}

// addrLookup matches the source (or destination) address of an IPv4
// (size 4) or IPv6 (size 16) header against set. Callers must have matched
// the protocol first: in the inet family the same offsets are read from
// whatever header the packet has.
func addrLookup(size int, source bool, set *nftables.Set, invert bool) []expr.Any {
	offset := uint32(12) // IPv4 saddr; daddr follows it
	if size == 16 {
		offset = 8 // IPv6 saddr; daddr follows it
	}
	if !source {
		offset += uint32(size)
	}
	return []expr.Any{
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(size)},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: invert},
	}
}

// ctEstablishedOrRelated is `ct state established,related`.
func ctEstablishedOrRelated() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// tcpSyn is `tcp flags syn / syn,rst`: SYN and SYN-ACK, but not RST.
func tcpSyn() []expr.Any {
	const tcpFlagSYN, tcpFlagRST = 0x02, 0x04
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagSYN | tcpFlagRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpFlagSYN}},
	}
}

// setMSSToRouteMTU is `tcp option maxseg size set rt mtu`.
func setMSSToRouteMTU() []expr.Any {
	const tcpOptMaxseg = 2
	return []expr.Any{
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: tcpOptMaxseg, Offset: 2, Len: 2},
	}
}

// ranges counts logical elements of a set as Inspect reports them: ranges
// for interval sets (their start elements), entries otherwise.
func (s setImage) ranges() int {
	if s.flags&unix.NFT_SET_INTERVAL == 0 {
		return len(s.elems)
	}
	n := 0
	for _, e := range s.elems {
		if e.flags&unix.NFT_SET_ELEM_INTERVAL_END == 0 {
			n++
		}
	}
	return n
}
