package dns

import (
	"net"
	"net/netip"
	"sync"

	"github.com/miekg/dns"
)

const (
	// advertisedUDPSize is the EDNS buffer size we announce in our own
	// answers (DNS flag day 2020: avoids IP fragmentation).
	advertisedUDPSize = 1232
	// maxUDPAnswer caps every UDP answer, whatever buffer size a client
	// claims: a query's source address is not proof of who sent it, so a
	// large answer is an amplifier pointed at whoever owns that address.
	// Larger answers are truncated (TC) and clients retry over TCP, where
	// the handshake proves the address (DNS flag day 2020's 1,232 bytes,
	// which also never fragments).
	maxUDPAnswer = 1232
	// replyBufSize covers any answer that fits a UDP datagram we send;
	// larger TCP answers allocate.
	replyBufSize = 4096
	// answerCap is the number of answer records a pooled reply holds
	// without allocating.
	answerCap = 16
)

// reply is the per-query scratch space, pooled so that answering from the
// zone allocates almost nothing.
type reply struct {
	msg dns.Msg
	opt dns.OPT
	q   [1]dns.Question
	ans [answerCap]dns.RR
	buf []byte
}

var replyPool = sync.Pool{New: func() any { return &reply{buf: make([]byte, replyBufSize)} }}

func getReply() *reply { return replyPool.Get().(*reply) }

func putReply(rp *reply) {
	clear(rp.ans[:])
	rp.msg = dns.Msg{}
	rp.opt = dns.OPT{}
	rp.q[0] = dns.Question{}
	if cap(rp.buf) > 4*replyBufSize {
		rp.buf = make([]byte, replyBufSize)
	}
	replyPool.Put(rp)
}

// query is what the handler learnt about one request.
type query struct {
	w      dns.ResponseWriter
	r      *dns.Msg
	q      dns.Question
	name   string // lower-case question name
	src    netip.Addr
	udp    bool
	edns   bool
	do     bool
	ecs    bool // the client sent an EDNS Client Subnet option
	limit  int  // largest response we may send over UDP
	policy bool // the client may use us as a recursive resolver
}

// ServeDNS answers one query: from the zone snapshot when the name is ours,
// otherwise by forwarding (for clients allowed to recurse) or REFUSED.
// It is safe for concurrent use and never blocks zone answers behind
// upstream traffic: forwarding happens only on the query's own goroutine.
// The TCP listeners serve through it; UDP datagrams take the fast path
// first (udp.go).
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	src, udp := remote(w)
	if job := s.serve(w, r, src, udp); job != nil {
		job.run()
	}
}

// upstreamJob is a query that waits for an upstream resolution. It owns
// the query and its reply scratch space, and answers through q.w.
type upstreamJob struct {
	s  *Server
	q  query
	rp *reply
}

// run resolves the query upstream and answers it; it can take as long as
// the upstreams do.
func (j *upstreamJob) run() {
	j.s.forwardUpstream(&j.q, j.rp)
	putReply(j.rp)
}

// serve answers one query without ever waiting for the network: from the
// zone, from the cache, or with an error. When the answer needs an
// upstream, it returns the job that resolves it instead (nothing has been
// sent yet); the caller runs the job, on a goroutine of its own when it
// must not wait.
func (s *Server) serve(w dns.ResponseWriter, r *dns.Msg, src netip.Addr, udp bool) *upstreamJob {
	s.stats.queries.Add(1)
	if r == nil || r.Response {
		// Never answer a response: two servers could loop forever.
		s.stats.dropped.Add(1)
		return nil
	}
	rp := getReply()
	q := query{w: w, r: r, limit: dns.MinMsgSize, src: src, udp: udp}
	if s.answer(&q, rp) {
		putReply(rp)
		return nil
	}
	return &upstreamJob{s: s, q: q, rp: rp}
}

// answer answers q unless that needs an upstream, and reports whether it did.
func (s *Server) answer(q *query, rp *reply) bool {
	r := q.r
	m := s.startReply(rp, q)
	if rc, ok := s.checkRequest(q); !ok {
		m.Rcode = rc
		s.write(q, rp)
		return true
	}
	q.q = r.Question[0]
	q.name = lowerASCII(q.q.Name)
	q.policy = s.allowRecursion(q.src)
	m.RecursionAvailable = q.policy

	snap := s.snap.Load()
	if n := snap.lookup(q.name); n != nil {
		s.answerNode(q, rp, snap, n)
		return true
	}
	if inZone(q.name, snap.origin) {
		s.answerNegative(q, rp, snap, dns.RcodeNameError, snap.soaFor(snap.origin))
		return true
	}
	if isReverseName(q.name) {
		if apex, ok := snap.reverseApex(q.name); ok {
			s.answerNegative(q, rp, snap, dns.RcodeNameError, snap.soaFor(apex))
			return true
		}
	}
	return s.forwardLocal(q, rp)
}

// remote extracts the client address and transport without allocating.
func remote(w dns.ResponseWriter) (netip.Addr, bool) {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return ap.Addr().Unmap(), true
	case *net.TCPAddr:
		ap := a.AddrPort()
		return ap.Addr().Unmap(), false
	}
	return netip.Addr{}, true
}

// startReply prepares the reply header and, when the client spoke EDNS,
// our OPT record.
func (s *Server) startReply(rp *reply, q *query) *dns.Msg {
	m := &rp.msg
	r := q.r
	m.Id = r.Id
	m.Response = true
	m.Opcode = r.Opcode
	m.RecursionDesired = r.RecursionDesired
	m.CheckingDisabled = r.CheckingDisabled
	if len(r.Question) > 0 {
		rp.q[0] = r.Question[0]
		m.Question = rp.q[:]
	}
	if opt := findOPT(r); opt != nil {
		q.edns = true
		q.do = opt.Do()
		q.limit = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxUDPAnswer)
		for _, o := range opt.Option {
			if o.Option() == dns.EDNS0SUBNET {
				q.ecs = true
			}
		}
		rp.opt.Hdr = dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: advertisedUDPSize}
		rp.opt.SetDo(q.do) // RFC 3225: the DO bit is copied into the response
		rp.ans[answerCap-1] = &rp.opt
		m.Extra = rp.ans[answerCap-1:]
	}
	m.Answer = rp.ans[: 0 : answerCap-1]
	return m
}

// findOPT returns the OPT record of a request.
func findOPT(r *dns.Msg) *dns.OPT {
	for _, rr := range r.Extra {
		if opt, ok := rr.(*dns.OPT); ok {
			return opt
		}
	}
	return nil
}

// checkRequest applies the rules every query must pass before lookup.
func (s *Server) checkRequest(q *query) (int, bool) {
	r := q.r
	opts := 0
	for _, rr := range r.Extra {
		if opt, ok := rr.(*dns.OPT); ok {
			opts++
			if opt.Version() != 0 {
				return dns.RcodeBadVers, false
			}
		}
	}
	switch {
	case r.Opcode != dns.OpcodeQuery:
		return dns.RcodeNotImplemented, false
	case len(r.Question) != 1 || opts > 1:
		return dns.RcodeFormatError, false
	}
	switch r.Question[0].Qtype {
	case dns.TypeOPT, dns.TypeNone:
		return dns.RcodeFormatError, false
	case dns.TypeAXFR, dns.TypeIXFR:
		// No zone transfers, and none forwarded on the client's behalf.
		return dns.RcodeRefused, false
	}
	return dns.RcodeSuccess, true
}

// answerNode answers a query for a name present in the snapshot.
func (s *Server) answerNode(q *query, rp *reply, snap *snapshot, n *node) {
	m := &rp.msg
	if q.q.Qclass != dns.ClassINET && q.q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		s.write(q, rp)
		return
	}
	m.Authoritative = true
	start := n.next.Add(1)
	switch q.q.Qtype {
	case dns.TypeA:
		m.Answer = rotate(m.Answer, n.a, start)
	case dns.TypeAAAA:
		m.Answer = rotate(m.Answer, n.aaaa, start)
	case dns.TypePTR:
		m.Answer = rotate(m.Answer, n.ptr, start)
	case dns.TypeSOA:
		if n.apex {
			m.Answer = append(m.Answer, snap.auths[n.name].soa...)
		}
	case dns.TypeNS:
		if n.apex {
			m.Answer = append(m.Answer, snap.auths[n.name].ns...)
			if glue := snap.lookup("ns." + snap.origin); glue != nil {
				// A fresh slice: the node's record slices are shared and immutable.
				extra := make([]dns.RR, 0, len(glue.a)+len(glue.aaaa)+len(m.Extra))
				extra = append(append(append(extra, glue.a...), glue.aaaa...), m.Extra...)
				m.Extra = extra
			}
		}
	case dns.TypeANY:
		m.Answer = rotate(m.Answer, n.a, start)
		m.Answer = rotate(m.Answer, n.aaaa, start)
		m.Answer = rotate(m.Answer, n.ptr, start)
		if n.apex {
			m.Answer = append(m.Answer, snap.auths[n.name].soa...)
			m.Answer = append(m.Answer, snap.auths[n.name].ns...)
		}
	}
	if len(m.Answer) == 0 {
		// The name exists but has no data of this type: NODATA.
		m.Ns = snap.soaFor(n.zone)
	}
	s.stats.zoneAnswers.Add(1)
	s.write(q, rp)
}

// answerNegative answers NXDOMAIN (or NODATA) with the zone's SOA in the
// authority section so resolvers can cache the miss (RFC 2308).
func (s *Server) answerNegative(q *query, rp *reply, snap *snapshot, rcode int, soa []dns.RR) {
	m := &rp.msg
	if q.q.Qclass != dns.ClassINET && q.q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		s.write(q, rp)
		return
	}
	m.Authoritative = true
	m.Rcode = rcode
	m.Ns = soa
	s.stats.zoneAnswers.Add(1)
	s.write(q, rp)
}

// rotate appends rrs to dst starting at index start, wrapping around, so
// successive queries see the addresses of a name in turn.
func rotate(dst, rrs []dns.RR, start uint32) []dns.RR {
	n := uint32(len(rrs))
	if n == 0 {
		return dst
	}
	first := start % n
	dst = append(dst, rrs[first:]...)
	return append(dst, rrs[:first]...)
}

// write packs the reply into the pooled buffer and sends it, truncating
// UDP answers that exceed what the client can receive.
func (s *Server) write(q *query, rp *reply) {
	m := &rp.msg
	if m.Rcode > 0xF && !q.edns {
		m.Rcode = dns.RcodeServerFailure
	}
	out, err := m.PackBuffer(rp.buf)
	if err == nil && q.udp && len(out) > q.limit {
		m.Truncate(q.limit)
		out, err = m.PackBuffer(rp.buf)
	}
	if err != nil {
		s.log.Warn("dns: cannot pack reply", "name", q.q.Name, "type", dns.TypeToString[q.q.Qtype], "err", err)
		s.writeFailure(q, dns.RcodeServerFailure)
		return
	}
	if cap(out) > cap(rp.buf) {
		rp.buf = out[:cap(out)]
	}
	s.send(q, out, m.Rcode)
}

// writeFailure sends a bare error reply (header and question only).
func (s *Server) writeFailure(q *query, rcode int) {
	m := new(dns.Msg)
	m.SetRcode(q.r, rcode)
	m.Question = nil
	if len(q.r.Question) == 1 {
		m.Question = q.r.Question
	}
	if rcode > 0xF {
		m.SetEdns0(advertisedUDPSize, false)
	}
	out, err := m.Pack()
	if err != nil {
		s.stats.dropped.Add(1)
		return
	}
	s.send(q, out, rcode)
}

func (s *Server) send(q *query, out []byte, rcode int) {
	s.stats.rcode(rcode)
	if _, err := q.w.Write(out); err != nil {
		s.log.Debug("dns: cannot send reply", "client", q.src, "err", err)
	}
}
