package dns

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"

	"github.com/miekg/dns"
)

// The UDP fast path answers the queries a resolver sends most (A, AAAA
// and PTR of names we hold, NODATA and NXDOMAIN inside our zones) straight
// from the wire: it reads the header and the question in place and copies
// records that the snapshot holds already packed, instead of unpacking the
// query into a dns.Msg and packing a reply.
//
// It must answer exactly as the full path (ServeDNS) would, byte for byte,
// so it takes only queries whose every detail it understands and leaves
// anything else to the full path: compression pointers or unusual bytes in
// the name, EDNS options other than cookies and padding, extra records,
// answers that would need truncation, apex SOA/NS/ANY queries, names it
// would forward. FuzzFastPathMatchesFullPath holds it to that.

const (
	headerLen = 12
	// optLen is the size of an OPT record without options: root name,
	// type, class (UDP size), TTL (extended rcode, version, flags), rdlength.
	optLen = 11
	// maxNameWire is the longest name on the wire (RFC 1035 2.3.4).
	maxNameWire = 255
	// fastOutMin is the least output space worth offering the fast path.
	fastOutMin = dns.MinMsgSize
)

// packedSet is a record set packed for the wire, uncompressed, the records
// back to back, so that a rotated answer is two copies.
type packedSet struct {
	wire []byte
	offs []uint16 // where each record starts in wire
}

// packSet packs rrs as the full path's message packing does (no name
// compression). It reports false if a record cannot be packed.
func packSet(rrs []dns.RR) (packedSet, bool) {
	if len(rrs) == 0 {
		return packedSet{}, true
	}
	var p packedSet
	buf := make([]byte, 0, 64*len(rrs))
	for _, rr := range rrs {
		size := dns.Len(rr) + 1
		start := len(buf)
		if start+size > 0xFFFF {
			return packedSet{}, false
		}
		buf = append(buf, make([]byte, size)...)
		end, err := dns.PackRR(rr, buf, start, nil, false)
		if err != nil {
			return packedSet{}, false
		}
		buf = buf[:end]
		p.offs = append(p.offs, uint16(start))
	}
	p.wire = buf
	return p, true
}

func (p *packedSet) count() int { return len(p.offs) }

// appendRotated appends the records starting with number start modulo
// their count, wrapping around: the order rotate gives the full path.
func (p *packedSet) appendRotated(dst []byte, start uint32) []byte {
	n := uint32(len(p.offs))
	if n == 0 {
		return dst
	}
	cut := p.offs[start%n]
	dst = append(dst, p.wire[cut:]...)
	return append(dst, p.wire[:cut]...)
}

// fastQuery is what the fast path read from a query datagram.
type fastQuery struct {
	qend   int // end of the question section (name, type, class)
	qtype  uint16
	edns   bool
	do     bool
	limit  int                   // largest answer the client accepts over UDP
	name   [maxNameWire + 1]byte // lower-case presentation form, with the trailing dot
	nameAt int                   // length of name
}

// parseFast reads a query the fast path can answer. It reports false for
// anything the full path must see, including everything the full path
// would answer with an error.
func parseFast(pkt []byte, fq *fastQuery) bool {
	if len(pkt) < headerLen {
		return false
	}
	// QR clear and opcode QUERY; the other flag bits do not change
	// anything the fast path answers.
	if pkt[2]&0xF8 != 0 {
		return false
	}
	qd := binary.BigEndian.Uint16(pkt[4:])
	an := binary.BigEndian.Uint16(pkt[6:])
	ns := binary.BigEndian.Uint16(pkt[8:])
	ar := binary.BigEndian.Uint16(pkt[10:])
	if qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return false
	}

	// The name: plain labels of letters, digits, '-' and '_' (what our
	// zones can hold, and what needs no escaping in presentation form).
	off, wire, at := headerLen, 0, 0
	for {
		if off >= len(pkt) {
			return false
		}
		l := int(pkt[off])
		off++
		if l == 0 {
			break
		}
		if l > maxLabelLen || off+l > len(pkt) {
			return false // a compression pointer, a reserved label type, or short
		}
		// The full path refuses names of 255 octets or more on the wire
		// (miekg/dns counts each label and its length byte).
		if wire += l + 1; wire >= maxNameWire {
			return false
		}
		for _, c := range pkt[off : off+l] {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			default:
				return false
			}
			fq.name[at] = c
			at++
		}
		fq.name[at] = '.'
		at++
		off += l
	}
	if at == 0 || off+4 > len(pkt) {
		return false // the root, or no type and class
	}
	fq.nameAt = at
	fq.qtype = binary.BigEndian.Uint16(pkt[off:])
	qclass := binary.BigEndian.Uint16(pkt[off+2:])
	off += 4
	fq.qend = off
	switch fq.qtype {
	case dns.TypeNone, dns.TypeOPT, dns.TypeAXFR, dns.TypeIXFR, dns.TypeSOA, dns.TypeNS, dns.TypeANY:
		return false
	}
	if qclass != dns.ClassINET && qclass != dns.ClassANY {
		return false
	}

	fq.edns, fq.do, fq.limit = false, false, dns.MinMsgSize
	if ar == 1 {
		// One OPT record, version 0, owned by the root.
		if off+optLen > len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != dns.TypeOPT || pkt[off+6] != 0 {
			return false
		}
		size := int(binary.BigEndian.Uint16(pkt[off+3:]))
		flags := binary.BigEndian.Uint16(pkt[off+7:])
		rdlen := int(binary.BigEndian.Uint16(pkt[off+9:]))
		opts := pkt[off+optLen:]
		if rdlen > len(opts) {
			return false
		}
		for opts = opts[:rdlen]; len(opts) > 0; {
			if len(opts) < 4 {
				return false
			}
			code := binary.BigEndian.Uint16(opts)
			olen := int(binary.BigEndian.Uint16(opts[2:]))
			// Cookies and padding are the options stub resolvers send,
			// they cannot fail to parse, and the answer ignores them.
			if olen > len(opts)-4 || code != dns.EDNS0COOKIE && code != dns.EDNS0PADDING {
				return false
			}
			opts = opts[4+olen:]
		}
		fq.edns = true
		fq.do = flags&0x8000 != 0
		fq.limit = min(max(size, dns.MinMsgSize), maxUDPAnswer)
	}
	return true
}

// lookupWire finds the node of a lower-case name given as bytes, without
// allocating.
func (s *snapshot) lookupWire(name []byte) *node {
	return s.shards[maphash.Bytes(s.seed, name)%numShards][string(name)]
}

// negativeApexWire is the apex whose SOA goes with an NXDOMAIN for a name
// absent from the snapshot, or "" when the name is not ours (it would be
// forwarded). Fast-path names hold no escapes, so zone membership is a
// plain suffix match.
func (s *snapshot) negativeApexWire(name []byte) (string, bool) {
	if hasZoneSuffix(name, s.origin) {
		return s.origin, true
	}
	if !hasZoneSuffix(name, "in-addr.arpa.") && !hasZoneSuffix(name, "ip6.arpa.") {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		if i == 0 || name[i-1] == '.' {
			if a, ok := s.auths[string(name[i:])]; ok && a != nil && string(name[i:]) != s.origin {
				return string(name[i:]), true
			}
		}
	}
	return "", false
}

// hasZoneSuffix reports whether name is zone or a name below it.
func hasZoneSuffix(name []byte, zone string) bool {
	if len(name) < len(zone) || string(name[len(name)-len(zone):]) != zone {
		return false
	}
	return len(name) == len(zone) || name[len(name)-len(zone)-1] == '.'
}

// fastAnswer answers a UDP query datagram from src into out (whose
// capacity bounds the answer) and reports whether it did. When it reports
// false nothing has changed: the full path must answer the query.
func (s *Server) fastAnswer(pkt []byte, src netip.Addr, out []byte) ([]byte, bool) {
	var fq fastQuery
	if !parseFast(pkt, &fq) {
		return nil, false
	}
	name := fq.name[:fq.nameAt]
	snap := s.snap.Load()

	rcode := dns.RcodeSuccess
	var set *packedSet
	var soa []byte
	n := snap.lookupWire(name)
	if n != nil {
		if !n.wireOK {
			return nil, false
		}
		switch fq.qtype {
		case dns.TypeA:
			set = &n.wireA
		case dns.TypeAAAA:
			set = &n.wireAAAA
		case dns.TypePTR:
			set = &n.wirePTR
		}
		if set == nil || set.count() == 0 {
			// NODATA; the SOA of a name outside every declared zone is
			// made on demand by the full path.
			a, ok := snap.auths[n.zone]
			if !ok || a.soaWire == nil {
				return nil, false
			}
			set, soa = nil, a.soaWire
		}
	} else {
		apex, ok := snap.negativeApexWire(name)
		if !ok {
			return nil, false
		}
		a := snap.auths[apex]
		if a.soaWire == nil {
			return nil, false
		}
		rcode, soa = dns.RcodeNameError, a.soaWire
	}

	size := fq.qend + len(soa)
	answers := 0
	if set != nil {
		size += len(set.wire)
		answers = set.count()
	}
	if fq.edns {
		size += optLen
	}
	if size > fq.limit || size > cap(out) {
		return nil, false // the full path truncates
	}

	s.stats.queries.Add(1)
	b := out[:0]
	b = append(b, pkt[0], pkt[1])        // ID
	b = append(b, 0x80|0x04|pkt[2]&0x01) // QR, AA, the client's RD
	flags := byte(rcode) | pkt[3]&0x10   // the client's CD
	if s.allowRecursion(src) {
		flags |= 0x80 // RA
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint16(b, 1)
	b = binary.BigEndian.AppendUint16(b, uint16(answers))
	b = binary.BigEndian.AppendUint16(b, uint16(min(len(soa), 1)))
	var ar uint16
	if fq.edns {
		ar = 1
	}
	b = binary.BigEndian.AppendUint16(b, ar)
	b = append(b, pkt[headerLen:fq.qend]...) // the question as the client spelt it
	if n != nil {
		start := n.next.Add(1) // every answer for the name moves the rotation, as in answerNode
		if set != nil {
			b = set.appendRotated(b, start)
		}
	}
	b = append(b, soa...)
	if fq.edns {
		var do byte
		if fq.do {
			do = 0x80
		}
		b = append(b, 0, byte(dns.TypeOPT>>8), byte(dns.TypeOPT), byte(advertisedUDPSize>>8), byte(advertisedUDPSize&0xFF), 0, 0, do, 0, 0, 0)
	}
	s.stats.zoneAnswers.Add(1)
	s.stats.rcode(rcode)
	return b, true
}
