package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// maxInflight bounds the upstream exchanges running at once (identical
// queries share one); past it clients get SERVFAIL instead of piling up
// goroutines and sockets behind a dead upstream.
const maxInflight = 1024

// maxWaiting bounds the queries waiting for an identical query's upstream
// exchange, all flights together: each is a goroutine, and a client
// repeating one name behind a dead upstream must not pile them up.
const maxWaiting = 4 * maxInflight

// flight is one upstream resolution that concurrent identical queries share.
type flight struct {
	done chan struct{}
	e    *entry
	err  error
}

var (
	errNoUpstreams = errors.New("no upstream resolvers are configured")
	errBusy        = fmt.Errorf("more than %d upstream queries are already in flight", maxInflight)
	errBusyWaiting = errors.New("too many queries are already waiting for the same upstream answers")
)

func (s *Server) maxWaiting() int {
	if s.waitCap > 0 {
		return s.waitCap
	}
	return maxWaiting
}

// forwardLocal answers what forwarding can answer without waiting for
// the network (REFUSED for clients that may not recurse or when there are
// no upstreams, and cache hits) and reports whether it did; if not, the
// query must go to forwardUpstream.
func (s *Server) forwardLocal(q *query, rp *reply) bool {
	if !q.policy {
		s.fail(q, rp, dns.RcodeRefused, dns.ExtendedErrorCodeProhibited, "recursion is not offered to this client")
		return true
	}
	if len(*s.upstreams.Load()) == 0 {
		// Not a resolver yet: REFUSED sends the client on to its next
		// configured nameserver, where SERVFAIL might stop it.
		s.fail(q, rp, dns.RcodeRefused, dns.ExtendedErrorCodeNotReady, errNoUpstreams.Error())
		return true
	}
	if s.cache != nil && !q.ecs {
		var kb [300]byte
		if e := s.cache.get(appendKey(kb[:0], q), s.now()); e != nil {
			s.stats.cacheHits.Add(1)
			s.serveEntry(q, rp, e)
			return true
		}
		s.stats.cacheMisses.Add(1)
	}
	return false
}

// forwardUpstream answers a name outside our zones from the upstreams
// (or a resolution of the same question already in flight).
func (s *Server) forwardUpstream(q *query, rp *reply) {
	var kb [300]byte
	e, err := s.resolve(appendKey(kb[:0], q), q)
	if err != nil {
		s.log.Debug("dns: forwarding failed", "name", q.q.Name, "type", dns.TypeToString[q.q.Qtype], "err", err)
		s.fail(q, rp, dns.RcodeServerFailure, dns.ExtendedErrorCodeNoReachableAuthority, err.Error())
		return
	}
	s.serveEntry(q, rp, e)
}

// fail answers with an error rcode, explaining it with an Extended DNS
// Error (RFC 8914) to clients that speak EDNS.
func (s *Server) fail(q *query, rp *reply, rcode int, ede uint16, why string) {
	rp.msg.Rcode = rcode
	if q.edns {
		rp.opt.Option = append(rp.opt.Option, &dns.EDNS0_EDE{InfoCode: ede, ExtraText: why})
	}
	s.write(q, rp)
}

// appendKey builds the cache and coalescing key: the question plus the
// request properties that change an upstream's answer.
func appendKey(dst []byte, q *query) []byte {
	dst = append(dst, q.name...)
	dst = binary.BigEndian.AppendUint16(dst, q.q.Qtype)
	dst = binary.BigEndian.AppendUint16(dst, q.q.Qclass)
	var flags byte
	if q.edns {
		flags |= 1
	}
	if q.do {
		flags |= 2
	}
	if q.r.CheckingDisabled {
		flags |= 4
	}
	return append(dst, flags)
}

// resolve asks the upstreams, sharing one exchange between concurrent
// identical queries, and caches what may be cached.
func (s *Server) resolve(key []byte, q *query) (*entry, error) {
	if q.ecs {
		// Client-subnet answers belong to that client alone.
		return s.exchange(q, "")
	}
	s.fmu.Lock()
	if f, ok := s.flights[string(key)]; ok {
		if s.waiting >= s.maxWaiting() {
			s.fmu.Unlock()
			return nil, errBusyWaiting
		}
		s.waiting++
		s.fmu.Unlock()
		defer func() {
			s.fmu.Lock()
			s.waiting--
			s.fmu.Unlock()
		}()
		s.stats.coalesced.Add(1)
		select {
		case <-f.done:
			return f.e, f.err
		case <-s.ctx.Done():
			return nil, errors.New("the DNS server is closing")
		}
	}
	k := string(key)
	f := &flight{done: make(chan struct{})}
	s.flights[k] = f
	s.fmu.Unlock()

	f.e, f.err = s.exchange(q, k)
	if f.err == nil && f.e.cache && s.cache != nil {
		s.cache.put(f.e)
	}
	s.fmu.Lock()
	delete(s.flights, k)
	s.fmu.Unlock()
	close(f.done)
	return f.e, f.err
}

// exchange sends the query to the upstreams in turn, starting with the
// one that last answered, until one gives a usable answer.
func (s *Server) exchange(q *query, key string) (*entry, error) {
	ups := *s.upstreams.Load()
	if len(ups) == 0 {
		return nil, errNoUpstreams
	}
	select {
	case s.inflight <- struct{}{}:
		defer func() { <-s.inflight }()
	default:
		return nil, errBusy
	}
	s.stats.forwarded.Add(1)
	req := upstreamQuery(q)
	first := int(s.preferred.Load())
	var errs []error
	for i := range ups {
		idx := (first + i) % len(ups)
		up := ups[idx]
		resp, err := s.ask(up, req)
		if err == nil && failed(resp.Rcode) {
			err = fmt.Errorf("upstream %v answered %s", up, dns.RcodeToString[resp.Rcode])
		}
		if err != nil {
			s.stats.upstreamErrors.Add(1)
			errs = append(errs, err)
			continue
		}
		tidyAnswer(resp, q.edns)
		e, err := newEntry(key, resp, s.now())
		if err != nil {
			s.stats.upstreamErrors.Add(1)
			errs = append(errs, fmt.Errorf("upstream %v: %w", up, err))
			continue
		}
		s.preferred.Store(uint32(idx))
		return e, nil
	}
	return nil, fmt.Errorf("all %d upstreams failed: %w", len(ups), errors.Join(errs...))
}

// failed reports rcodes that mean "ask someone else".
func failed(rcode int) bool {
	switch rcode {
	case dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented, dns.RcodeFormatError:
		return true
	}
	return false
}

// upstreamQuery is the query we send upstream: the client's question and
// EDNS (UDP size, DO bit and end-to-end options), with a fresh ID.
func upstreamQuery(q *query) *dns.Msg {
	m := &dns.Msg{
		MsgHdr: dns.MsgHdr{
			Id:                dns.Id(),
			Opcode:            dns.OpcodeQuery,
			RecursionDesired:  true,
			CheckingDisabled:  q.r.CheckingDisabled,
			AuthenticatedData: q.r.AuthenticatedData,
		},
		Question: []dns.Question{q.q},
	}
	if opt := findOPT(q.r); opt != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(max(opt.UDPSize(), dns.MinMsgSize))
		o.SetDo(opt.Do())
		o.Option = endToEnd(opt.Option)
		m.Extra = []dns.RR{o}
	}
	return m
}

// endToEnd drops the EDNS options that only make sense between two
// adjacent hops (cookies, TCP keepalive, padding).
func endToEnd(opts []dns.EDNS0) []dns.EDNS0 {
	var out []dns.EDNS0
	for _, o := range opts {
		switch o.Option() {
		case dns.EDNS0COOKIE, dns.EDNS0TCPKEEPALIVE, dns.EDNS0PADDING:
		default:
			out = append(out, o)
		}
	}
	return out
}

// tidyAnswer makes an upstream answer fit to hand to our client: hop-by-hop
// options removed, and no OPT at all for a client that sent none.
func tidyAnswer(m *dns.Msg, clientEDNS bool) {
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if opt, ok := rr.(*dns.OPT); ok {
			if !clientEDNS {
				continue
			}
			opt.Option = endToEnd(opt.Option)
		}
		extra = append(extra, rr)
	}
	m.Extra = extra
}

// ask queries one upstream over UDP, retrying over TCP when the answer
// was truncated.
func (s *Server) ask(up netip.AddrPort, req *dns.Msg) (*dns.Msg, error) {
	resp, err := s.askOver("udp", up, req)
	if err == nil && resp.Truncated {
		resp, err = s.askOver("tcp", up, req)
	}
	return resp, err
}

func (s *Server) askOver(network string, up netip.AddrPort, req *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.forwardTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, up.String())
	if err != nil {
		return nil, fmt.Errorf("upstream %v over %s: %w", up, network, err)
	}
	defer conn.Close()
	// Close() of the server or the timeout unblocks the read at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	co := &dns.Conn{Conn: conn, UDPSize: dns.MaxMsgSize}
	if err := co.WriteMsg(req); err != nil {
		return nil, fmt.Errorf("upstream %v over %s: %w", up, network, err)
	}
	for {
		resp, err := co.ReadMsg()
		var malformed *dns.Error
		switch {
		case err != nil && network == "udp" && errors.As(err, &malformed):
			continue // garbage on our port: keep waiting for the real answer
		case err != nil:
			if ctx.Err() != nil && s.ctx.Err() == nil {
				err = fmt.Errorf("no answer within %v", s.forwardTimeout)
			}
			return nil, fmt.Errorf("upstream %v over %s: %w", up, network, err)
		case resp.Id != req.Id || !sameQuestion(resp, req):
			if network == "tcp" {
				return nil, fmt.Errorf("upstream %v over tcp: answer does not match the question", up)
			}
			continue // a stale or forged datagram (RFC 5452): ignore it
		}
		return resp, nil
	}
}

func sameQuestion(resp, req *dns.Msg) bool {
	if len(resp.Question) != 1 {
		return false
	}
	a, b := resp.Question[0], req.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// serveEntry sends a stored upstream answer to one client: the stored
// bytes with the client's ID, RD bit and question spelling, and TTLs aged
// by the time the answer has spent in the cache.
func (s *Server) serveEntry(q *query, rp *reply, e *entry) {
	buf := append(rp.buf[:0], e.wire...)
	rp.buf = buf[:cap(buf)]
	binary.BigEndian.PutUint16(buf, q.r.Id)
	if q.r.RecursionDesired {
		buf[2] |= 0x01
	} else {
		buf[2] &^= 0x01
	}
	var nb [256]byte
	if n, err := dns.PackDomainName(q.q.Name, nb[:], 0, nil, false); err == nil && n == e.qlen && 12+n <= len(buf) {
		copy(buf[12:], nb[:n]) // 0x20-randomising clients expect their own spelling back
	}
	if age := s.now().Sub(e.stored); age >= time.Second {
		secs := uint32(min(age/time.Second, 1<<31))
		for _, off := range e.ttls {
			ttl := binary.BigEndian.Uint32(buf[off:])
			binary.BigEndian.PutUint32(buf[off:], ttl-min(ttl, secs))
		}
	}
	rcode := int(buf[3] & 0x0f)
	if q.udp && len(buf) > q.limit {
		m := new(dns.Msg)
		if err := m.Unpack(buf); err != nil {
			s.fail(q, rp, dns.RcodeServerFailure, dns.ExtendedErrorCodeOther, "cannot truncate the upstream answer")
			return
		}
		m.Truncate(q.limit)
		out, err := m.Pack()
		if err != nil {
			s.fail(q, rp, dns.RcodeServerFailure, dns.ExtendedErrorCodeOther, "cannot truncate the upstream answer")
			return
		}
		buf = out
	}
	s.send(q, buf, rcode)
}
