package dns

import (
	"hash/maphash"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/miekg/dns"
)

// The zone is served from an immutable snapshot published through an
// atomic pointer: queries load the pointer and never take a lock. Writers
// (Register, SetZone, …) are serialised by Server.mu, update the mutable
// zoneState below and publish a new snapshot that shares every unchanged
// node with the previous one. Nodes are spread over shards so a change
// copies one small map instead of the whole zone: registering the
// 10,000th container stays cheap.

const numShards = 256

// node is everything we hold at one owner name. Its record slices are
// never modified after publication; only the round-robin counter moves.
type node struct {
	name string // lower-case FQDN
	zone string // apex of the zone holding the name, for the SOA of negative answers
	apex bool   // SOA and NS live here
	a    []dns.RR
	aaaa []dns.RR
	ptr  []dns.RR
	next atomic.Uint32 // rotation start for the next answer

	// The same records packed for the wire, for the UDP fast path
	// (fastpath.go); wireOK is false when one of them could not be packed,
	// and then every query for the name takes the full path.
	wireA, wireAAAA, wirePTR packedSet
	wireOK                   bool
}

func (n *node) empty() bool { return len(n.a) == 0 && len(n.aaaa) == 0 && len(n.ptr) == 0 }

// authority holds the apex records of one zone (the cluster zone or a
// declared reverse zone).
type authority struct {
	soa     []dns.RR // exactly one SOA, as a slice so answers can append it without copying
	ns      []dns.RR
	soaWire []byte // the SOA packed for the wire (fast path); nil if it could not be packed
}

type snapshot struct {
	origin string // cluster zone, lower-case FQDN
	ttl    uint32
	serial uint32
	seed   maphash.Seed
	shards [numShards]map[string]*node
	auths  map[string]*authority // apex → SOA/NS
	names  int
	addrs  int
}

func (s *snapshot) shard(name string) int {
	return int(maphash.String(s.seed, name) % numShards)
}

func (s *snapshot) lookup(name string) *node {
	return s.shards[s.shard(name)][name]
}

// reverseApex finds the declared reverse zone holding a lower-case name
// that is not itself in the snapshot, by walking up its labels.
func (s *snapshot) reverseApex(name string) (string, bool) {
	for n, ok := name, true; ok; n, ok = parentName(n) {
		if _, found := s.auths[n]; found && n != s.origin {
			return n, true
		}
	}
	return "", false
}

// soaFor returns the SOA of the zone whose apex is given. Names we answer
// for outside any declared zone (PTRs of held addresses) are each their own
// tiny zone; their SOA is made on demand because it is only needed for
// negative answers there, which are rare.
func (s *snapshot) soaFor(apex string) []dns.RR {
	if a, ok := s.auths[apex]; ok {
		return a.soa
	}
	return []dns.RR{newSOA(apex, s.origin, s.serial, s.ttl)}
}

func newSOA(apex, origin string, serial, ttl uint32) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: apex, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      "ns." + origin,
		Mbox:    "hostmaster." + origin,
		Serial:  serial,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  ttl, // RFC 2308: the negative-caching TTL
	}
}

// zoneState is the writers' view of the zone, guarded by Server.mu.
type zoneState struct {
	origin  string
	ttl     uint32
	serial  uint32
	names   map[string][]netip.Addr // relative name → addresses in registration order
	owners  map[netip.Addr][]string // address → relative names holding it, sorted
	ptrs    map[string]netip.Addr   // PTR owner name → address
	ents    map[string]int          // empty non-terminal → number of names below it
	naddrs  int                     // name/address pairs, kept as names change
	glue    []netip.Addr            // our listener addresses, the A/AAAA of ns.<zone>
	reverse []reverseZone
	apexes  map[string]bool // declared reverse zone apexes
	cur     *snapshot
}

func newZoneState(origin string, ttl, serial uint32, reverse []reverseZone) *zoneState {
	z := &zoneState{
		origin: origin,
		ttl:    ttl,
		serial: serial,
		names:  map[string][]netip.Addr{},
		owners: map[netip.Addr][]string{},
		ptrs:   map[string]netip.Addr{},
	}
	z.setReverse(reverse)
	z.rebuildAll()
	return z
}

func (z *zoneState) setReverse(reverse []reverseZone) {
	z.reverse = reverse
	z.apexes = make(map[string]bool, len(reverse))
	for _, rz := range reverse {
		z.apexes[rz.apex] = true
	}
}

func (z *zoneState) fqdn(rel string) string { return rel + "." + z.origin }

// ptrApex is the apex of the zone holding addr's PTR, or "" when addr is
// outside every declared reverse zone.
func (z *zoneState) ptrApex(addr netip.Addr) string {
	if rz, ok := zoneFor(z.reverse, addr); ok {
		return rz.apex
	}
	return ""
}

// setName replaces the address list of rel (nil removes the name) and
// records every owner name whose node must be rebuilt in dirty.
func (z *zoneState) setName(rel string, addrs []netip.Addr, dirty map[string]struct{}) {
	old := z.names[rel]
	z.naddrs += len(addrs) - len(old)
	if len(addrs) == 0 {
		delete(z.names, rel)
	} else {
		z.names[rel] = addrs
	}
	name := z.fqdn(rel)
	dirty[name] = struct{}{}
	if (len(old) == 0) != (len(addrs) == 0) {
		z.adjustENT(name, z.origin, len(addrs) > 0, dirty)
	}
	for _, a := range old {
		if !slices.Contains(addrs, a) {
			z.setOwner(a, rel, false, dirty)
		}
	}
	for _, a := range addrs {
		if !slices.Contains(old, a) {
			z.setOwner(a, rel, true, dirty)
		}
	}
}

func (z *zoneState) setOwner(addr netip.Addr, rel string, add bool, dirty map[string]struct{}) {
	owners := z.owners[addr]
	i, found := slices.BinarySearch(owners, rel)
	switch {
	case add && !found:
		owners = slices.Insert(slices.Clip(owners), i, rel)
	case !add && found:
		owners = slices.Delete(slices.Clone(owners), i, i+1)
	default:
		return
	}
	name := ptrName(addr)
	dirty[name] = struct{}{}
	wasPresent := len(z.owners[addr]) > 0
	if len(owners) == 0 {
		delete(z.owners, addr)
		delete(z.ptrs, name)
	} else {
		z.owners[addr] = owners
		z.ptrs[name] = addr
	}
	if apex := z.ptrApex(addr); apex != "" && wasPresent != (len(owners) > 0) {
		z.adjustENT(name, apex, len(owners) > 0, dirty)
	}
}

// adjustENT counts name in (or out of) every ancestor between it and apex,
// so those ancestors exist as empty non-terminals (NODATA, not NXDOMAIN).
func (z *zoneState) adjustENT(name, apex string, add bool, dirty map[string]struct{}) {
	for p, ok := parentName(name); ok && p != apex && len(p) > len(apex); p, ok = parentName(p) {
		if add {
			z.ents[p]++
		} else if z.ents[p]--; z.ents[p] <= 0 {
			delete(z.ents, p)
		}
		dirty[p] = struct{}{}
	}
}

// buildNode derives the node for one owner name from the writer state, or
// nil when nothing exists there.
func (z *zoneState) buildNode(name string) *node {
	n := &node{name: name}
	switch {
	case name == z.origin:
		n.apex, n.zone = true, name
	case strings.HasSuffix(name, "."+z.origin):
		n.zone = z.origin
		rel := name[:len(name)-len(z.origin)-1]
		addrs := z.names[rel]
		if rel == "ns" && len(addrs) == 0 {
			addrs = z.glue
		}
		for _, a := range addrs {
			if a.Is4() {
				n.a = append(n.a, &dns.A{Hdr: z.hdr(name, dns.TypeA), A: a.AsSlice()})
			} else {
				n.aaaa = append(n.aaaa, &dns.AAAA{Hdr: z.hdr(name, dns.TypeAAAA), AAAA: a.AsSlice()})
			}
		}
	default:
		n.zone = name
		for p, ok := name, true; ok; p, ok = parentName(p) {
			if z.apexes[p] {
				n.zone = p
				break
			}
		}
		n.apex = z.apexes[name]
		if addr, ok := z.ptrs[name]; ok {
			for _, rel := range z.owners[addr] {
				n.ptr = append(n.ptr, &dns.PTR{Hdr: z.hdr(name, dns.TypePTR), Ptr: z.fqdn(rel)})
			}
		}
	}
	if n.empty() && !n.apex && z.ents[name] == 0 {
		return nil
	}
	var okA, okAAAA, okPTR bool
	n.wireA, okA = packSet(n.a)
	n.wireAAAA, okAAAA = packSet(n.aaaa)
	n.wirePTR, okPTR = packSet(n.ptr)
	n.wireOK = okA && okAAAA && okPTR
	return n
}

func (z *zoneState) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: z.ttl}
}

// authorities builds the apex records for the current serial.
func (z *zoneState) authorities() map[string]*authority {
	auths := make(map[string]*authority, 1+len(z.apexes))
	ns := "ns." + z.origin
	for _, apex := range append([]string{z.origin}, slices.Collect(maps.Keys(z.apexes))...) {
		soa := newSOA(apex, z.origin, z.serial, z.ttl)
		wire, ok := packSet([]dns.RR{soa})
		a := &authority{
			soa: []dns.RR{soa},
			ns:  []dns.RR{&dns.NS{Hdr: z.hdr(apex, dns.TypeNS), Ns: ns}},
		}
		if ok {
			a.soaWire = wire.wire
		}
		auths[apex] = a
	}
	return auths
}

// publish bumps the serial and swaps in a snapshot where the dirty names
// are rebuilt; other nodes are shared with the previous snapshot.
func (z *zoneState) publish(dirty map[string]struct{}) *snapshot {
	z.serial++
	next := *z.cur
	next.serial = z.serial
	next.auths = z.authorities()
	var cloned [numShards]bool
	for name := range dirty {
		i := next.shard(name)
		if !cloned[i] {
			next.shards[i] = maps.Clone(next.shards[i])
			cloned[i] = true
		}
		if n := z.buildNode(name); n != nil {
			next.shards[i][name] = n
		} else {
			delete(next.shards[i], name)
		}
	}
	z.count(&next)
	z.cur = &next
	return z.cur
}

// rebuildAll recomputes every node: used when the zone, TTL or reverse
// zones change, and at start.
func (z *zoneState) rebuildAll() *snapshot {
	z.serial++
	z.ents = map[string]int{}
	z.ptrs = map[string]netip.Addr{}
	z.naddrs = 0
	for _, a := range z.names {
		z.naddrs += len(a)
	}
	names := map[string]struct{}{z.origin: {}, z.fqdn("ns"): {}}
	for apex := range z.apexes {
		names[apex] = struct{}{}
	}
	for rel := range z.names {
		names[z.fqdn(rel)] = struct{}{}
		z.adjustENT(z.fqdn(rel), z.origin, true, names)
	}
	for addr := range z.owners {
		name := ptrName(addr)
		z.ptrs[name] = addr
		names[name] = struct{}{}
		if apex := z.ptrApex(addr); apex != "" {
			z.adjustENT(name, apex, true, names)
		}
	}
	s := &snapshot{origin: z.origin, ttl: z.ttl, serial: z.serial, seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i] = map[string]*node{}
	}
	for name := range names {
		if n := z.buildNode(name); n != nil {
			s.shards[s.shard(name)][name] = n
		}
	}
	s.auths = z.authorities()
	z.count(s)
	z.cur = s
	return s
}

func (z *zoneState) count(s *snapshot) {
	s.names, s.addrs = len(z.names), z.naddrs
}
