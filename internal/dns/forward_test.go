package dns

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestForwardToUpstream(t *testing.T) {
	up := newStub(t, answerWith("192.0.2.1", 300))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	m := ask(t, s, "example.org.", dns.TypeA)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Fatalf("forwarded answer: %s %v", dns.RcodeToString[m.Rcode], m.Answer)
	}
	if m.Authoritative || !m.RecursionAvailable {
		t.Fatalf("forwarded answer aa=%v ra=%v; want a non-authoritative recursive answer", m.Authoritative, m.RecursionAvailable)
	}
	if got := up.queries.Load(); got != 1 {
		t.Fatalf("upstream saw %d queries", got)
	}
	if st := s.Stats(); st.Forwarded != 1 || st.Responses["NOERROR"] != 1 {
		t.Fatalf("stats after one forward: %+v", st)
	}
}

func TestForwardRetriesTruncatedAnswerOverTCP(t *testing.T) {
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		if _, tcp := w.RemoteAddr().(*net.TCPAddr); !tcp {
			m := new(dns.Msg)
			m.SetReply(r)
			m.Truncated = true
			w.WriteMsg(m)
			return
		}
		answerWith("192.0.2.2", 60)(w, r)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	m := ask(t, s, "big.example.org.", dns.TypeA)
	if m.Truncated || len(m.Answer) != 1 {
		t.Fatalf("answer tc=%v %v; want the full answer fetched over TCP", m.Truncated, m.Answer)
	}
	seen := up.received()
	if len(seen) != 2 || seen[0].tcp || !seen[1].tcp {
		t.Fatalf("upstream saw %d queries (tcp: %v); want UDP then TCP", len(seen), seen)
	}
}

func TestForwardTruncatesForTheClient(t *testing.T) {
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for i := range 60 {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IPv4(198, 51, 100, byte(i+1)),
			})
		}
		if _, tcp := w.RemoteAddr().(*net.TCPAddr); !tcp {
			m.Truncate(dns.MinMsgSize)
		}
		w.WriteMsg(m)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	w := &fakeWriter{remote: client4}
	s.ServeDNS(w, newQuery("many.example.org.", dns.TypeA))
	udp := w.replies(t)[0]
	if !udp.Truncated || len(w.wire[0]) > dns.MinMsgSize {
		t.Fatalf("UDP client got tc=%v in %d bytes; want TC within 512 bytes", udp.Truncated, len(w.wire[0]))
	}
	tcp := exchange(t, s, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, newQuery("many.example.org.", dns.TypeA))
	if tcp.Truncated || len(tcp.Answer) != 60 {
		t.Fatalf("TCP client got tc=%v with %d records; want all 60", tcp.Truncated, len(tcp.Answer))
	}
}

// An upstream's large answer reaches a UDP client within 1,232 bytes with
// TC, however large a buffer the client claims (the upstream itself sent
// it whole over TCP).
func TestForwardCapsUDPAnswers(t *testing.T) {
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for i := range 100 {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IPv4(198, 51, 100, byte(i+1)),
			})
		}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), false)
		}
		w.WriteMsg(m)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	for range 2 { // from the upstream, then from the cache
		q := newQuery("many.example.org.", dns.TypeA)
		q.SetEdns0(65000, false)
		w := &fakeWriter{remote: client4}
		s.ServeDNS(w, q)
		m := w.replies(t)[0]
		if !m.Truncated || len(w.wire[0]) > 1232 || len(m.Answer) >= 100 {
			t.Fatalf("UDP client claiming 65000 bytes got tc=%v, %d records in %d bytes; want TC within 1232 bytes", m.Truncated, len(m.Answer), len(w.wire[0]))
		}
	}
}

func TestForwardPassesEDNSThrough(t *testing.T) {
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if opt := r.IsEdns0(); opt != nil {
			reply := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
			reply.SetUDPSize(1400)
			reply.SetDo(opt.Do())
			reply.Option = []dns.EDNS0{
				&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "7570"},
				&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708aabbccddeeff0011"},
			}
			m.Extra = append(m.Extra, reply)
		}
		w.WriteMsg(m)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})

	req := newQuery("edns.example.org.", dns.TypeA)
	req.SetEdns0(1300, true)
	opt := req.IsEdns0()
	opt.Option = []dns.EDNS0{
		&dns.EDNS0_NSID{Code: dns.EDNS0NSID},
		&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
	}
	m := exchange(t, s, client4, req)

	sent := up.received()[0].msg.IsEdns0()
	if sent == nil || sent.UDPSize() != 1300 || !sent.Do() {
		t.Fatalf("upstream saw OPT %v; want the client's size 1300 and DO", sent)
	}
	var sawNSID, sawCookie bool
	for _, o := range sent.Option {
		sawNSID = sawNSID || o.Option() == dns.EDNS0NSID
		sawCookie = sawCookie || o.Option() == dns.EDNS0COOKIE
	}
	if !sawNSID || sawCookie {
		t.Fatalf("upstream options %v; want NSID passed and the client's cookie (meant for us) dropped", sent.Option)
	}
	got := m.IsEdns0()
	if got == nil || got.UDPSize() != 1400 || !got.Do() {
		t.Fatalf("client got OPT %v; want the upstream's", got)
	}
	if len(got.Option) != 1 || got.Option[0].Option() != dns.EDNS0NSID {
		t.Fatalf("client got options %v; want the upstream's NSID and no upstream cookie", got.Option)
	}

	plain := ask(t, s, "plain.example.org.", dns.TypeA)
	if up.received()[1].msg.IsEdns0() != nil || plain.IsEdns0() != nil {
		t.Fatal("a query without EDNS gained an OPT record on its way")
	}
}

func TestForwardTriesNextUpstream(t *testing.T) {
	dead := newStub(t, func(dns.ResponseWriter, *dns.Msg) {}) // never answers
	broken := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		w.WriteMsg(m)
	})
	good := newStub(t, answerWith("192.0.2.3", 60))
	s := newTestServer(t, Config{
		Upstreams:      []netip.AddrPort{dead.addr, broken.addr, good.addr},
		ForwardTimeout: 200 * time.Millisecond,
		CacheSize:      -1,
	})
	m := ask(t, s, "next.example.org.", dns.TypeA)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("answer %s %v; want the third upstream's", dns.RcodeToString[m.Rcode], m.Answer)
	}
	if dead.queries.Load() != 1 || broken.queries.Load() != 1 || good.queries.Load() != 1 {
		t.Fatalf("queries dead=%d broken=%d good=%d; want one each", dead.queries.Load(), broken.queries.Load(), good.queries.Load())
	}
	// The upstream that answered is asked first next time.
	ask(t, s, "again.example.org.", dns.TypeA)
	if dead.queries.Load() != 1 || good.queries.Load() != 2 {
		t.Fatalf("second query: dead=%d good=%d; want the working upstream asked first", dead.queries.Load(), good.queries.Load())
	}
	if st := s.Stats(); st.UpstreamErrors != 2 {
		t.Fatalf("UpstreamErrors = %d, want 2", st.UpstreamErrors)
	}
}

func TestForwardAllUpstreamsFailIsServfail(t *testing.T) {
	dead := newStub(t, func(dns.ResponseWriter, *dns.Msg) {})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{dead.addr}, ForwardTimeout: 100 * time.Millisecond})
	req := newQuery("dead.example.org.", dns.TypeA)
	req.SetEdns0(1232, false)
	m := exchange(t, s, client4, req)
	if m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	var ede *dns.EDNS0_EDE
	for _, o := range m.IsEdns0().Option {
		if e, ok := o.(*dns.EDNS0_EDE); ok {
			ede = e
		}
	}
	if ede == nil || ede.InfoCode != dns.ExtendedErrorCodeNoReachableAuthority || !strings.Contains(ede.ExtraText, dead.addr.String()) {
		t.Fatalf("extended error %v; want No Reachable Authority naming the upstream", ede)
	}
}

func TestRecursionOnlyForAllowedClients(t *testing.T) {
	up := newStub(t, answerWith("192.0.2.4", 60))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}}) // default: loopback only
	mustRegister(t, s, "web", "10.1.0.5")

	if m := exchange(t, s, remote4, newQuery("example.org.", dns.TypeA)); m.Rcode != dns.RcodeRefused || m.RecursionAvailable {
		t.Fatalf("non-loopback client: rcode %s ra=%v; want REFUSED without RA", dns.RcodeToString[m.Rcode], m.RecursionAvailable)
	}
	if m := exchange(t, s, remote4, newQuery("web.prod.local.", dns.TypeA)); len(m.Answer) != 1 {
		t.Fatalf("zone names must be answered for every client; got %v", m.Answer)
	}
	if up.queries.Load() != 0 {
		t.Fatal("a refused query reached the upstream")
	}
	if m := ask(t, s, "example.org.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("loopback client: rcode %s, want NOERROR", dns.RcodeToString[m.Rcode])
	}

	deny := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, AllowRecursion: func(netip.Addr) bool { return false }})
	if m := ask(t, deny, "example.org.", dns.TypeA); m.Rcode != dns.RcodeRefused {
		t.Fatalf("AllowRecursion=false: rcode %s, want REFUSED", dns.RcodeToString[m.Rcode])
	}
	none := newTestServer(t, Config{})
	if m := ask(t, none, "example.org.", dns.TypeA); m.Rcode != dns.RcodeRefused {
		t.Fatalf("no upstreams: rcode %s, want REFUSED", dns.RcodeToString[m.Rcode])
	}
}

// A slow upstream must never delay names from our zone: with a forward
// held at the upstream, a zone query completes while the forward is
// still pending.
func TestSlowUpstreamDoesNotDelayZoneAnswers(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		arrived <- struct{}{}
		<-release
		answerWith("192.0.2.5", 60)(w, r)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, ForwardTimeout: time.Minute})
	mustRegister(t, s, "web", "10.1.0.5")

	forwarded := make(chan *dns.Msg, 1)
	go func() {
		w := &fakeWriter{remote: client4}
		s.ServeDNS(w, newQuery("slow.example.org.", dns.TypeA))
		forwarded <- w.replies(t)[0]
	}()
	<-arrived
	if got := answerAddrs(ask(t, s, "web.prod.local.", dns.TypeA)); len(got) != 1 {
		t.Fatalf("zone answer %v", got)
	}
	select {
	case <-forwarded:
		t.Fatal("the forward completed before it was released; the test proves nothing")
	default:
	}
	close(release)
	if m := <-forwarded; len(m.Answer) != 1 {
		t.Fatalf("released forward answered %v", m.Answer)
	}
}

func TestIdenticalQueriesAreCoalesced(t *testing.T) {
	release := make(chan struct{})
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		<-release
		answerWith("192.0.2.6", 60)(w, r)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, ForwardTimeout: time.Minute})
	const clients = 5
	var wg sync.WaitGroup
	answers := make(chan *dns.Msg, clients)
	for i := range clients {
		wg.Go(func() {
			req := newQuery("same.example.org.", dns.TypeA)
			req.Id = uint16(1000 + i)
			answers <- exchange(t, s, client4, req)
		})
	}
	waitFor(t, "the other clients to join the first one's upstream query", func() bool { return s.Stats().Coalesced == clients-1 })
	close(release)
	wg.Wait()
	close(answers)
	for m := range answers {
		if len(m.Answer) != 1 {
			t.Fatalf("coalesced client got %v", m.Answer)
		}
	}
	if n := up.queries.Load(); n != 1 {
		t.Fatalf("upstream saw %d queries for %d identical client queries; want 1", n, clients)
	}
}

// Queries waiting for an identical query's upstream answer are goroutines:
// past the cap, another one is answered SERVFAIL at once instead of piling
// up behind a hanging upstream.
func TestWaitersForOneUpstreamAnswerAreCapped(t *testing.T) {
	release := make(chan struct{})
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		<-release
		answerWith("192.0.2.6", 60)(w, r)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, ForwardTimeout: time.Minute})
	s.waitCap = 3
	var wg sync.WaitGroup
	for i := range 4 { // the first asks upstream, three wait
		wg.Go(func() {
			req := newQuery("same.example.org.", dns.TypeA)
			req.Id = uint16(2000 + i)
			exchange(t, s, client4, req)
		})
	}
	waitFor(t, "three clients waiting for the first one's query", func() bool { return s.Stats().Coalesced == 3 })
	done := make(chan *dns.Msg, 1)
	go func() { done <- exchange(t, s, client4, newQuery("same.example.org.", dns.TypeA)) }()
	select {
	case m := <-done:
		if m.Rcode != dns.RcodeServerFailure {
			t.Fatalf("a query past the cap got %s", dns.RcodeToString[m.Rcode])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a query past the cap waited too")
	}
	close(release)
	wg.Wait()
}

func TestCacheHitAndExpiry(t *testing.T) {
	up := newStub(t, answerWith("192.0.2.7", 300))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	clock := newFakeClock()
	s.now = clock.Now

	ask(t, s, "cached.example.org.", dns.TypeA)
	clock.Advance(100 * time.Second)
	m := exchange(t, s, client4, newQuery("CACHED.example.org.", dns.TypeA))
	if up.queries.Load() != 1 {
		t.Fatalf("upstream saw %d queries for two client queries within the TTL; want 1", up.queries.Load())
	}
	if ttl := m.Answer[0].Header().Ttl; ttl != 200 {
		t.Fatalf("cached answer TTL %d after 100 s of 300; want 200", ttl)
	}
	if m.Question[0].Name != "CACHED.example.org." {
		t.Fatalf("cached answer echoes question %q; want the client's spelling", m.Question[0].Name)
	}
	if st := s.Stats(); st.CacheHits != 1 || st.CacheMisses != 1 || st.CacheEntries != 1 {
		t.Fatalf("cache stats %+v", st)
	}
	clock.Advance(200 * time.Second) // TTL reached
	ask(t, s, "cached.example.org.", dns.TypeA)
	if up.queries.Load() != 2 {
		t.Fatalf("upstream saw %d queries; want the expired answer refetched", up.queries.Load())
	}
	// Flags that change the answer are part of the key.
	do := newQuery("cached.example.org.", dns.TypeA)
	do.SetEdns0(1232, true)
	exchange(t, s, client4, do)
	if up.queries.Load() != 3 {
		t.Fatal("a DNSSEC-OK query was answered from a cache entry fetched without DO")
	}
}

func TestNegativeAnswersAreCachedForSOAMinimum(t *testing.T) {
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		if r.Question[0].Qtype == dns.TypeAAAA {
			m.Rcode = dns.RcodeSuccess // NODATA
		}
		m.Ns = []dns.RR{&dns.SOA{
			Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns:  "ns.example.org.", Mbox: "h.example.org.", Serial: 1, Refresh: 1, Retry: 1, Expire: 1, Minttl: 30,
		}}
		w.WriteMsg(m)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	clock := newFakeClock()
	s.now = clock.Now

	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		before := up.queries.Load()
		first := ask(t, s, "nope.example.org.", qtype)
		clock.Advance(29 * time.Second)
		second := ask(t, s, "nope.example.org.", qtype)
		if up.queries.Load() != before+1 || second.Rcode != first.Rcode || soaOf(second) == nil {
			t.Fatalf("%s: upstream saw %d queries within the SOA minimum; want 1 and the cached negative answer", dns.TypeToString[qtype], up.queries.Load()-before)
		}
		clock.Advance(time.Second)
		ask(t, s, "nope.example.org.", qtype)
		if up.queries.Load() != before+2 {
			t.Fatalf("%s: negative answer outlived min(SOA TTL, SOA minimum) = 30 s", dns.TypeToString[qtype])
		}
	}
}

func TestCacheIsBoundedAndCanBeDisabled(t *testing.T) {
	up := newStub(t, answerWith("192.0.2.8", 300))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, CacheSize: 2})
	for _, n := range []string{"a.example.org.", "b.example.org.", "a.example.org.", "c.example.org."} {
		ask(t, s, n, dns.TypeA)
	}
	// a was used after b, so b is the one evicted.
	if st := s.Stats(); st.CacheEntries != 2 || up.queries.Load() != 3 {
		t.Fatalf("entries=%d upstream queries=%d; want 2 and 3", st.CacheEntries, up.queries.Load())
	}
	ask(t, s, "a.example.org.", dns.TypeA)
	if up.queries.Load() != 3 {
		t.Fatal("the recently used entry was evicted")
	}
	ask(t, s, "b.example.org.", dns.TypeA)
	if up.queries.Load() != 4 {
		t.Fatal("the least recently used entry was kept past the bound")
	}

	off := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, CacheSize: -1})
	before := up.queries.Load()
	ask(t, off, "a.example.org.", dns.TypeA)
	ask(t, off, "a.example.org.", dns.TypeA)
	if up.queries.Load() != before+2 {
		t.Fatal("a disabled cache answered a query")
	}
}

func TestSetUpstreamsSwitchesAndFlushes(t *testing.T) {
	first := newStub(t, answerWith("192.0.2.9", 300))
	second := newStub(t, answerWith("192.0.2.10", 300))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{first.addr}})
	ask(t, s, "x.example.org.", dns.TypeA)
	s.SetUpstreams([]netip.AddrPort{second.addr})
	m := ask(t, s, "x.example.org.", dns.TypeA)
	if m.Answer[0].(*dns.A).A.String() != "192.0.2.10" || second.queries.Load() != 1 {
		t.Fatalf("after SetUpstreams got %v; want the new upstream's fresh answer", m.Answer)
	}
}

func TestForwardIgnoresMismatchedDatagrams(t *testing.T) {
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		forged := new(dns.Msg)
		forged.SetReply(r)
		forged.Id = r.Id + 1
		forged.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(6, 6, 6, 6)}}
		w.WriteMsg(forged)
		wrongName := forged.Copy()
		wrongName.Id = r.Id
		wrongName.Question[0].Name = "other.example.org."
		w.WriteMsg(wrongName)
		answerWith("192.0.2.11", 60)(w, r)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	m := ask(t, s, "real.example.org.", dns.TypeA)
	if got := answerAddrs(m); len(got) != 1 || got[0] != "192.0.2.11" {
		t.Fatalf("answer %v; want the datagram that matches our ID and question", got)
	}
}

// An upstream answer with a zero-length SOA unpacks, but miekg/dns would
// re-encode it into bytes no client can parse (found by FuzzUpstreamAnswer):
// such an answer counts as a failed upstream.
func TestUpstreamAnswerThatCannotBeReencodedIsAFailure(t *testing.T) {
	odd := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		m.Ns = []dns.RR{&dns.RFC3597{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60}}}
		w.WriteMsg(m)
	})
	good := newStub(t, answerWith("192.0.2.12", 60))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{odd.addr, good.addr}})
	if got := answerAddrs(ask(t, s, "odd.example.org.", dns.TypeA)); len(got) != 1 || got[0] != "192.0.2.12" {
		t.Fatalf("answer %v; want the next upstream's", got)
	}
	only := newTestServer(t, Config{Upstreams: []netip.AddrPort{odd.addr}})
	if m := ask(t, only, "odd.example.org.", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s; want SERVFAIL rather than a malformed answer", dns.RcodeToString[m.Rcode])
	}
}
