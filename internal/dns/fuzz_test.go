package dns

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzUpstream answers anything, in shapes chosen by the first letter of
// the name, so fuzzed queries exercise every forwarding path.
func fuzzUpstream(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	name := strings.ToLower(r.Question[0].Name)
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 30},
		Ns: "ns.example.", Mbox: "h.example.", Minttl: 10}
	switch {
	case strings.HasPrefix(name, "n"):
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{soa}
	case strings.HasPrefix(name, "s"):
		m.Rcode = dns.RcodeServerFailure
	case strings.HasPrefix(name, "t") && !tcp:
		m.Truncated = true
	default:
		for i := range 3 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(60 * i)}, A: net.IPv4(192, 0, 2, byte(i))})
		}
		m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 5}, Txt: []string{"extra"}})
	}
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
	}
	w.WriteMsg(m)
}

// newFuzzServer is the server every fuzz target of the query path uses:
// forward and reverse names, a name with several addresses (rotation),
// one too big for a 512-byte answer and one too big for any UDP answer,
// declared reverse zones, an upstream that answers in every shape, a fixed
// clock and a listener (for the NS glue).
func newFuzzServer(f *testing.F) *Server {
	up := newStub(f, fuzzUpstream)
	s := newTestServer(f, Config{
		Upstreams:       []netip.AddrPort{up.addr},
		ForwardTimeout:  time.Second,
		CacheSize:       64,
		ReversePrefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/20"), netip.MustParsePrefix("fd00::/62")},
	})
	s.now = newFakeClock().Now
	mustRegister(f, s, "web", "10.1.0.5", "fd00::5")
	mustRegister(f, s, "db.backend", "10.1.0.6")
	mustRegister(f, s, "outside", "192.168.9.9")
	mustRegister(f, s, "rr", "10.1.1.1", "10.1.1.2", "10.1.1.3", "fd00::11", "fd00::12")
	var big []netip.Addr
	for i := range 40 {
		big = append(big, netip.AddrFrom4([4]byte{10, 1, 2, byte(i + 1)}))
	}
	if err := s.Set("big", big...); err != nil {
		f.Fatal(err)
	}
	var huge []netip.Addr
	for i := range 100 {
		huge = append(huge, netip.AddrFrom4([4]byte{10, 1, 3, byte(i + 1)}))
	}
	if err := s.Set("huge", huge...); err != nil {
		f.Fatal(err)
	}
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		f.Fatal(err)
	}
	return s
}

// addQuerySeeds adds the query shapes the fast path takes, and their
// near misses, to a fuzz target's corpus (testdata/fuzz holds more).
func addQuerySeeds(f *testing.F) {
	q := func(name string, qtype uint16, edit func(*dns.Msg)) {
		m := newQuery(name, qtype)
		if edit != nil {
			edit(m)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	edns := func(size uint16, do bool, opts ...dns.EDNS0) func(*dns.Msg) {
		return func(m *dns.Msg) {
			m.SetEdns0(size, do)
			m.IsEdns0().Option = opts
		}
	}
	for _, name := range []string{"web.prod.local.", "WeB.PROD.local.", "rr.prod.local.", "big.prod.local.", "db.backend.prod.local.",
		"backend.prod.local.", "missing.prod.local.", "x.db.backend.prod.local.", "5.0.1.10.in-addr.arpa.",
		"9.9.168.192.in-addr.arpa.", "7.0.1.10.in-addr.arpa.", "0.1.10.in-addr.arpa.", "in-addr.arpa.", "www.example.org."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeTXT, dns.TypeHTTPS} {
			q(name, qtype, nil)
		}
	}
	q("rr.prod.local.", dns.TypeA, edns(1232, true))
	q("rr.prod.local.", dns.TypeAAAA, edns(100, false))
	q("big.prod.local.", dns.TypeA, edns(4096, false))
	q("huge.prod.local.", dns.TypeA, edns(65000, false))
	q("huge.prod.local.", dns.TypeA, edns(1300, true))
	q("big.prod.local.", dns.TypeA, edns(700, false))
	q("web.prod.local.", dns.TypeA, edns(1232, false, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}))
	q("missing.prod.local.", dns.TypeA, edns(1232, true, &dns.EDNS0_PADDING{Padding: make([]byte, 20)}))
	q("web.prod.local.", dns.TypeA, edns(1232, false, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0).To4()}))
	q("web.prod.local.", dns.TypeA, func(m *dns.Msg) { m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData = false, true, true })
	q("web.prod.local.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY })
	q("web.prod.local.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })
	q("web.prod.local.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify })
	q("web.prod.local.", dns.TypeA, func(m *dns.Msg) {
		m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"x"}})
	})
	q("prod.local.", dns.TypeSOA, edns(1232, false))
	q("prod.local.", dns.TypeNS, nil)
	q("rr.prod.local.", dns.TypeANY, nil)
}

// FuzzServeDNS feeds arbitrary wire messages to the handler, from allowed
// and refused clients over UDP and TCP, and arbitrary datagrams to the UDP
// path (fast path first). It must never panic, and whatever it sends must
// be a well-formed answer to the query, within the UDP size.
func FuzzServeDNS(f *testing.F) {
	s := newFuzzServer(f)
	addQuerySeeds(f)
	froms := []net.Addr{
		client4,
		&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
		remote4,
		&net.TCPAddr{IP: net.IPv6loopback, Port: 40000},
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		checkDatagram(t, s, data)

		r := new(dns.Msg)
		if err := r.Unpack(data); err != nil {
			return
		}
		from := froms[int(r.Id)%len(froms)]
		w := &fakeWriter{remote: from}
		s.ServeDNS(w, r)
		if len(w.wire) > 1 {
			t.Fatalf("handler wrote %d messages for one query", len(w.wire))
		}
		if len(w.wire) == 0 {
			if !r.Response {
				t.Fatal("a query went unanswered")
			}
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(w.wire[0]); err != nil {
			t.Fatalf("unparseable reply: %v", err)
		}
		if m.Id != r.Id || !m.Response {
			t.Fatalf("reply id=%d qr=%v for query id=%d", m.Id, m.Response, r.Id)
		}
		if _, udp := from.(*net.UDPAddr); udp {
			limit := udpLimit(r)
			if len(w.wire[0]) > limit {
				t.Fatalf("UDP reply of %d bytes exceeds the client's %d", len(w.wire[0]), limit)
			}
		}
	})
}

// fuzzSources are the clients a datagram is taken to come from, chosen by
// the low bits of its ID: allowed to recurse (loopback) or not.
var fuzzSources = []netip.AddrPort{
	netip.MustParseAddrPort("127.0.0.1:40000"),
	netip.MustParseAddrPort("192.0.2.7:40000"),
	netip.MustParseAddrPort("[::1]:40000"),
}

func fuzzSource(data []byte) netip.AddrPort {
	if len(data) < 2 {
		return fuzzSources[0]
	}
	return fuzzSources[int(data[1])%len(fuzzSources)]
}

// datagramAnswers runs one datagram through the UDP path as a reader
// does, running an upstream job to the end, and returns what was sent.
func datagramAnswers(s *Server, data []byte, from netip.AddrPort, space []byte) [][]byte {
	var sent [][]byte
	send := func(b []byte, to netip.AddrPort) error {
		sent = append(sent, append([]byte(nil), b...))
		return nil
	}
	reply, job := s.answerDatagram(data, from, netip.MustParseAddrPort("127.0.0.1:53"), space, send)
	if reply != nil {
		sent = append(sent, append([]byte(nil), reply...))
	}
	if job != nil {
		job.run()
	}
	return sent
}

// checkDatagram holds the UDP path to what every answer must be.
func checkDatagram(t *testing.T, s *Server, data []byte) {
	sent := datagramAnswers(s, data, fuzzSource(data), make([]byte, 0, udpOutSize))
	if len(sent) > 1 {
		t.Fatalf("UDP path sent %d answers to one datagram", len(sent))
	}
	if len(sent) == 0 {
		return
	}
	m := new(dns.Msg)
	if err := m.Unpack(sent[0]); err != nil {
		t.Fatalf("UDP path sent an unparseable answer: %v", err)
	}
	if m.Id != binary.BigEndian.Uint16(data) || !m.Response {
		t.Fatalf("UDP answer id=%d qr=%v for datagram id=%d", m.Id, m.Response, binary.BigEndian.Uint16(data))
	}
	limit := dns.MinMsgSize
	if r := new(dns.Msg); r.Unpack(data) == nil {
		limit = udpLimit(r)
	}
	if len(sent[0]) > limit {
		t.Fatalf("UDP answer of %d bytes exceeds the client's %d", len(sent[0]), limit)
	}
}

// udpLimit is the largest UDP answer a query may get: what its client
// accepts (512 bytes without EDNS), and never more than 1,232 bytes.
func udpLimit(r *dns.Msg) int {
	limit := dns.MinMsgSize
	if opt := findOPT(r); opt != nil {
		limit = max(limit, int(opt.UDPSize()))
	}
	return min(limit, 1232)
}

// wireHeader reads the header of a datagram of at least 12 bytes.
func wireHeader(data []byte) dns.Header {
	u := func(i int) uint16 { return binary.BigEndian.Uint16(data[i:]) }
	return dns.Header{Id: u(0), Bits: u(2), Qdcount: u(4), Ancount: u(6), Nscount: u(8), Arcount: u(10)}
}

// saveRotation records every name's round-robin position and returns a
// function that puts them back, so that two paths can answer the same
// query from the same state.
func saveRotation(s *Server) func() {
	saved := map[*node]uint32{}
	for _, shard := range s.snap.Load().shards {
		for _, n := range shard {
			saved[n] = n.next.Load()
		}
	}
	return func() {
		for n, v := range saved {
			n.next.Store(v)
		}
	}
}

// FuzzFastPathMatchesFullPath: whenever the fast path answers a datagram,
// the full path (miekg/dns unpacking the datagram, ServeDNS packing the
// answer) must accept it and give the very same bytes.
func FuzzFastPathMatchesFullPath(f *testing.F) {
	s := newFuzzServer(f)
	addQuerySeeds(f)
	space := make([]byte, 0, udpOutSize)

	f.Fuzz(func(t *testing.T, data []byte) {
		from := fuzzSource(data)
		restore := saveRotation(s)
		fast, ok := s.fastAnswer(data, from.Addr(), space)
		if !ok {
			return
		}
		fast = append([]byte(nil), fast...)
		restore()

		r := new(dns.Msg)
		if err := r.Unpack(data); err != nil {
			t.Fatalf("fast path answered a datagram the full path cannot unpack (%v)", err)
		}
		if act := dns.DefaultMsgAcceptFunc(wireHeader(data)); act != dns.MsgAccept {
			t.Fatalf("fast path answered a datagram miekg/dns's server rejects (%d)", act)
		}
		w := &fakeWriter{remote: net.UDPAddrFromAddrPort(from)}
		s.ServeDNS(w, r)
		if len(w.wire) != 1 {
			t.Fatalf("full path sent %d answers", len(w.wire))
		}
		if !bytes.Equal(fast, w.wire[0]) {
			want, got := new(dns.Msg), new(dns.Msg)
			want.Unpack(w.wire[0])
			got.Unpack(fast)
			t.Fatalf("fast path answer differs from the full path's\nfast:\n%x\n%v\nfull:\n%x\n%v", fast, got, w.wire[0], want)
		}
	})
}

// FuzzUpstreamAnswer feeds arbitrary upstream answers through the path
// that stores and serves them (TTL indexing, ageing, question patching,
// truncation for the client): upstream bytes are network input too.
func FuzzUpstreamAnswer(f *testing.F) {
	for _, name := range []string{"www.example.org.", "n.example.", "big.example."} {
		req := newQuery(name, dns.TypeA)
		w := &fakeWriter{remote: client4}
		fuzzUpstream(w, req)
		f.Add(w.wire[0], uint16(0), uint16(3))
	}
	s := newTestServer(f, Config{})
	clock := newFakeClock()
	s.now = clock.Now

	f.Fuzz(func(t *testing.T, data []byte, id uint16, ageSecs uint16) {
		resp := new(dns.Msg)
		if err := resp.Unpack(data); err != nil || len(resp.Question) != 1 {
			return
		}
		req := new(dns.Msg)
		req.Id = id
		req.Question = []dns.Question{resp.Question[0]}
		if resp.IsEdns0() != nil {
			req.SetEdns0(dns.MinMsgSize, false)
		}
		q := query{r: req, q: req.Question[0], udp: true, limit: dns.MinMsgSize, edns: req.IsEdns0() != nil}
		tidyAnswer(resp, q.edns)
		e, err := newEntry("k", resp, clock.Now())
		if err != nil {
			return
		}
		ttl, _ := cacheTTL(resp)
		if ttl > maxPositiveTTL {
			t.Fatalf("cache TTL %d above the cap", ttl)
		}
		clock.Advance(time.Duration(ageSecs) * time.Second)
		w := &fakeWriter{remote: client4}
		q.w = w
		rp := getReply()
		s.startReply(rp, &q)
		s.serveEntry(&q, rp, e)
		putReply(rp)
		if len(w.wire) != 1 {
			t.Fatalf("wrote %d messages", len(w.wire))
		}
		m := new(dns.Msg)
		if err := m.Unpack(w.wire[0]); err != nil {
			t.Fatalf("served answer does not parse: %v", err)
		}
		if m.Id != id || len(w.wire[0]) > dns.MinMsgSize {
			t.Fatalf("served id %d (want %d), %d bytes", m.Id, id, len(w.wire[0]))
		}
	})
}

// memConn is a net.PacketConn in memory, so that miekg/dns's own UDP
// server can be fed datagrams one at a time and its answers collected.
type memConn struct {
	in     chan memDatagram
	out    chan []byte
	closed chan struct{}
	once   sync.Once
}

type memDatagram struct {
	b    []byte
	from net.Addr
}

func (c *memConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-c.in:
		return copy(b, d.b), d.from, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	}
}

func (c *memConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	c.out <- append([]byte(nil), b...)
	return len(b), nil
}

func (c *memConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *memConn) LocalAddr() net.Addr              { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// miekgUDP is the UDP path as it was before our own read loop: miekg/dns's
// Server reading datagrams and handing them to ServeDNS. It reports what
// became of each datagram through its accept, invalid-message and handler
// hooks, so answering one datagram at a time needs no timing guesses.
type miekgUDP struct {
	conn     *memConn
	accepted chan dns.MsgAcceptAction
	invalid  chan struct{}
	handled  chan struct{}
}

func newMiekgUDP(t testing.TB, s *Server) *miekgUDP {
	m := &miekgUDP{
		conn:     &memConn{in: make(chan memDatagram), out: make(chan []byte, 4), closed: make(chan struct{})},
		accepted: make(chan dns.MsgAcceptAction, 1),
		invalid:  make(chan struct{}, 1),
		handled:  make(chan struct{}, 1),
	}
	srv := &dns.Server{
		PacketConn: m.conn,
		UDPSize:    udpReadSize,
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			s.ServeDNS(w, r)
			m.handled <- struct{}{}
		}),
		MsgAcceptFunc: func(dh dns.Header) dns.MsgAcceptAction {
			a := dns.DefaultMsgAcceptFunc(dh)
			m.accepted <- a
			return a
		},
		MsgInvalidFunc: func([]byte, error) { m.invalid <- struct{}{} },
	}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { m.conn.Close(); srv.Shutdown() }) // closing first ends its read loop
	return m
}

// answer feeds one datagram and returns the answer sent, or nil.
func (m *miekgUDP) answer(t testing.TB, data []byte, from netip.AddrPort) []byte {
	m.conn.in <- memDatagram{b: data, from: net.UDPAddrFromAddrPort(from)}
	wait := func() []byte {
		select {
		case b := <-m.conn.out:
			return b
		case <-time.After(10 * time.Second):
			t.Fatal("miekg/dns's server rejected a datagram but sent nothing")
			return nil
		}
	}
	if len(data) < headerLen {
		<-m.invalid
		return nil
	}
	switch <-m.accepted {
	case dns.MsgIgnore:
		return nil
	case dns.MsgReject, dns.MsgRejectNotImplemented:
		return wait()
	}
	select {
	case <-m.invalid: // unpacking failed: FORMERR follows
		return wait()
	case <-m.handled:
		select {
		case b := <-m.conn.out:
			return b
		default:
			return nil
		}
	}
}

// FuzzUDPMatchesMiekgServer: every datagram gets from our UDP path (fast
// path, full path, upstream jobs) exactly what miekg/dns's UDP server
// with the same handler sent, or nothing when that sent nothing.
func FuzzUDPMatchesMiekgServer(f *testing.F) {
	s := newFuzzServer(f)
	addQuerySeeds(f)
	old := newMiekgUDP(f, s)
	space := make([]byte, 0, udpOutSize)

	f.Fuzz(func(t *testing.T, data []byte) {
		from := fuzzSource(data)
		restore := saveRotation(s)
		ours := datagramAnswers(s, data, from, space)
		restore()
		want := old.answer(t, data, from)
		switch {
		case len(ours) > 1:
			t.Fatalf("our UDP path sent %d answers", len(ours))
		case want == nil && len(ours) == 0:
		case want == nil:
			t.Fatalf("our UDP path answered %x; miekg/dns's server sent nothing", ours[0])
		case len(ours) == 0:
			t.Fatalf("our UDP path sent nothing; miekg/dns's server answered %x", want)
		case !bytes.Equal(ours[0], want):
			a, b := new(dns.Msg), new(dns.Msg)
			a.Unpack(ours[0])
			b.Unpack(want)
			t.Fatalf("answers differ\nours:\n%x\n%v\nmiekg/dns's server:\n%x\n%v", ours[0], a, want, b)
		}
	})
}
