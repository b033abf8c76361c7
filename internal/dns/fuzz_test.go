package dns

import (
	"net"
	"net/netip"
	"strings"
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

// FuzzServeDNS feeds arbitrary wire messages to the handler, from allowed
// and refused clients over UDP and TCP. It must never panic, and whatever
// it sends must be a well-formed answer to the query, within the UDP size.
func FuzzServeDNS(f *testing.F) {
	up := newStub(f, fuzzUpstream)
	s := newTestServer(f, Config{
		Upstreams:       []netip.AddrPort{up.addr},
		ForwardTimeout:  time.Second,
		CacheSize:       64,
		ReversePrefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/20"), netip.MustParsePrefix("fd00::/62")},
	})
	mustRegister(f, s, "web", "10.1.0.5", "fd00::5")
	mustRegister(f, s, "db.backend", "10.1.0.6")
	mustRegister(f, s, "outside", "192.168.9.9")
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		f.Fatal(err)
	}
	froms := []net.Addr{
		client4,
		&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
		remote4,
		&net.TCPAddr{IP: net.IPv6loopback, Port: 40000},
	}

	f.Fuzz(func(t *testing.T, data []byte) {
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
			limit := dns.MinMsgSize
			if opt := findOPT(r); opt != nil {
				limit = max(limit, int(opt.UDPSize()))
			}
			if len(w.wire[0]) > limit {
				t.Fatalf("UDP reply of %d bytes exceeds the client's %d", len(w.wire[0]), limit)
			}
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
