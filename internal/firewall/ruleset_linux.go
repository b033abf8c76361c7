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
	b := newRulesetBuilder(d.table)
	b.addSets(d)
	if d.masquerade {
		b.masqueradeChain()
	}
	b.forwardChain(d)
	if len(d.dns4)+len(d.dns6) > 0 {
		b.dnsInputChain(d)
	}
	if d.clampMSS {
		b.clampChain()
	}
	return b.finish()
}

// rulesetBuilder accumulates a ruleset's sets, chains and rules in the
// order Apply sends them.
type rulesetBuilder struct {
	rs   ruleset
	sets map[string]*nftables.Set
}

// The statements end rules; each rule gets its own, as builds may run
// concurrently.
func counter() []expr.Any { return []expr.Any{&expr.Counter{}} }
func accept() []expr.Any  { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }
func drop() []expr.Any    { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

func newRulesetBuilder(table string) *rulesetBuilder {
	return &rulesetBuilder{
		rs: ruleset{
			present:  true,
			table:    &nftables.Table{Name: table, Family: nftables.TableFamilyINet},
			rules:    map[string][]ruleImage{},
			nftElems: map[string][]nftables.SetElement{},
		},
		sets: map[string]*nftables.Set{},
	}
}

func (b *rulesetBuilder) addSets(d desired) {
	b.addSet(setOverlay, nftables.TypeIFName, false, ifnameElements(d.overlay))
	b.addSet(setGlobal, nftables.TypeIFName, false, ifnameElements(d.global))
	b.addSet(setBridges, nftables.TypeIFName, false, ifnameElements(d.bridges))
	b.addSet(setPaths, typePath, false, pathElements(d.paths))
	b.addSet(setSources4, nftables.TypeIPAddr, true, intervalElements(d.sources4, 4))
	b.addSet(setSources6, nftables.TypeIP6Addr, true, intervalElements(d.sources6, 16))
	b.addSet(setCluster4, nftables.TypeIPAddr, true, intervalElements(d.cluster4, 4))
	b.addSet(setCluster6, nftables.TypeIP6Addr, true, intervalElements(d.cluster6, 16))
	if d.clampMSS {
		b.addSet(setClamp, nftables.TypeIFName, false, ifnameElements(d.clamp))
	}
	if len(d.dns4)+len(d.dns6) > 0 {
		b.addSet(setDNS4, typeDNS4, false, listenerElements(d.dns4))
		b.addSet(setDNS6, typeDNS6, false, listenerElements(d.dns6))
	}
}

func (b *rulesetBuilder) addSet(name string, keyType nftables.SetDatatype, interval bool, elems []nftables.SetElement) {
	// Set IDs only link lookups to sets created in the same batch. We
	// assign them ourselves: the library's automatic allocation uses an
	// unsynchronised package counter, which would race between concurrent
	// calls.
	s := &nftables.Set{
		Table:    b.rs.table,
		ID:       uint32(len(b.rs.nftSets) + 1),
		Name:     name,
		KeyType:  keyType,
		Interval: interval,
	}
	if keyType.Name == nftables.TypeIFName.Name {
		// nft prints interface names only when the set says its
		// key is in host byte order, as nft itself records it.
		s.KeyByteOrder = binaryutil.NativeEndian
	}
	b.rs.nftSets = append(b.rs.nftSets, s)
	b.rs.nftElems[name] = elems
	b.rs.sets = append(b.rs.sets, imageOfSet(s, elems))
	b.sets[name] = s
}

func (b *rulesetBuilder) addChain(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	c := &nftables.Chain{Name: name, Table: b.rs.table, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept}
	b.rs.chains = append(b.rs.chains, c)
	return c
}

func (b *rulesetBuilder) addRule(c *nftables.Chain, comment string, exprs ...[]expr.Any) {
	b.rs.nftRules = append(b.rs.nftRules, &nftables.Rule{
		Table:    b.rs.table,
		Chain:    c,
		Exprs:    slices.Concat(exprs...),
		UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
	})
}

func (b *rulesetBuilder) in(key expr.MetaKey, set string) []expr.Any {
	return ifaceLookup(key, b.sets[set], false)
}

func (b *rulesetBuilder) notIn(key expr.MetaKey, set string) []expr.Any {
	return ifaceLookup(key, b.sets[set], true)
}

// masqueradeChain masquerades container egress that leaves through anything
// but our own devices (the uplink, typically), unless it is headed into the
// cluster: cluster peers must see real container addresses.
func (b *rulesetBuilder) masqueradeChain() {
	nat := b.addChain(chainNAT, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	masq := []expr.Any{&expr.Masq{}}
	for _, f := range []struct {
		family           string
		proto            byte
		addrLen          int
		sources, cluster string
	}{
		{"IPv4", unix.NFPROTO_IPV4, 4, setSources4, setCluster4},
		{"IPv6", unix.NFPROTO_IPV6, 16, setSources6, setCluster6},
	} {
		b.addRule(nat, "masquerade "+f.family+" container egress",
			nfproto(f.proto),
			addrLookup(f.addrLen, true, b.sets[f.sources], false),
			addrLookup(f.addrLen, false, b.sets[f.cluster], true),
			b.notIn(expr.MetaKeyOIFNAME, setOverlay),
			b.notIn(expr.MetaKeyOIFNAME, setBridges),
			counter(), masq)
	}
}

// forwardChain counts our traffic classes and, with isolation on, decides
// what may enter a container: a bridge or a container link (join_global)
// is entered only by what comes from the overlay, from the same bridge,
// from a container's own join_global link, or belongs to a connection
// already established. Everything else, above all what arrives from the
// underlay of a host that routes the cluster CIDR via this node, is dropped
// here, in our own table. The node's own traffic never passes this hook
// (output, not forward).
func (b *rulesetBuilder) forwardChain(d desired) {
	fwd := b.addChain(chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	b.addRule(fwd, "established and related", ctEstablishedOrRelated(), counter(), accept())
	b.addRule(fwd, "bridge to overlay", b.in(expr.MetaKeyIIFNAME, setBridges), b.in(expr.MetaKeyOIFNAME, setOverlay), counter(), accept())
	b.addRule(fwd, "overlay or same bridge to bridge", pathLookup(b.sets[setPaths]), counter(), accept())
	// A name prefix, not a set: container links come and go with every
	// attach, and the table is rebuilt only when services change. The
	// exclusions keep a bridge or overlay device whose name shares the
	// prefix what it is.
	link := func(key expr.MetaKey) []expr.Any {
		return slices.Concat(namePrefix(key, d.links, false), b.notIn(key, setBridges), b.notIn(key, setOverlay))
	}
	if d.links != "" {
		b.addRule(fwd, "container link to bridge", link(expr.MetaKeyIIFNAME), b.in(expr.MetaKeyOIFNAME, setBridges), counter(), accept())
	}
	if d.isolate {
		b.addRule(fwd, "anything else into a bridge", b.in(expr.MetaKeyOIFNAME, setBridges), counter(), drop())
	}
	if d.links != "" {
		b.addRule(fwd, "global overlay to container link", b.in(expr.MetaKeyIIFNAME, setGlobal), link(expr.MetaKeyOIFNAME), counter(), accept())
		b.addRule(fwd, "container link to container link", link(expr.MetaKeyIIFNAME), link(expr.MetaKeyOIFNAME), counter(), accept())
		if d.isolate {
			b.addRule(fwd, "anything else into a container link", link(expr.MetaKeyOIFNAME), counter(), drop())
		}
	}
}

// dnsInputChain lets DNS listeners take queries only from the interfaces
// containers, peers and the node itself use. The server checks the arrival
// interface itself; this rule keeps the packets away from it.
func (b *rulesetBuilder) dnsInputChain(d desired) {
	input := b.addChain(chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	ours := slices.Concat(
		namePrefix(expr.MetaKeyIIFNAME, "lo\x00", true),
		b.notIn(expr.MetaKeyIIFNAME, setBridges),
		b.notIn(expr.MetaKeyIIFNAME, setOverlay))
	if d.links != "" {
		ours = append(ours, namePrefix(expr.MetaKeyIIFNAME, d.links, true)...)
	}
	b.addRule(input, "DNS to our listeners from elsewhere (IPv4)", nfproto(unix.NFPROTO_IPV4), listenerLookup(4, b.sets[setDNS4]), ours, counter(), drop())
	b.addRule(input, "DNS to our listeners from elsewhere (IPv6)", nfproto(unix.NFPROTO_IPV6), listenerLookup(16, b.sets[setDNS6]), ours, counter(), drop())
}

// clampChain clamps the MSS of forwarded SYN and SYN-ACK segments to the
// route MTU whenever they enter or leave one of our devices, so that a
// 1500-byte container talking through a 1420-byte tunnel (or a low-MTU
// uplink) never depends on ICMP "fragmentation needed" getting through. The
// kernel only ever lowers an MSS here. The second rule skips packets the
// first already clamped so each SYN is counted once.
func (b *rulesetBuilder) clampChain() {
	clamp := b.addChain(chainClamp, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityMangle)
	b.addRule(clamp, "clamp MSS leaving our devices", b.in(expr.MetaKeyOIFNAME, setClamp), tcpSyn(), counter(), setMSSToRouteMTU())
	b.addRule(clamp, "clamp MSS entering from our devices", b.in(expr.MetaKeyIIFNAME, setClamp), b.notIn(expr.MetaKeyOIFNAME, setClamp), tcpSyn(), counter(), setMSSToRouteMTU())
}

// finish adds the images Drifted compares with the kernel's.
func (b *rulesetBuilder) finish() (ruleset, error) {
	for _, r := range b.rs.nftRules {
		img, err := imageOfRule(b.rs.table.Family, r)
		if err != nil {
			return ruleset{}, err
		}
		b.rs.rules[r.Chain.Name] = append(b.rs.rules[r.Chain.Name], img)
	}
	return b.rs, nil
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
