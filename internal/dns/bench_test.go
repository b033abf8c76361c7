package dns

import (
	"net"
	"net/netip"
	"strconv"
	"testing"

	"github.com/miekg/dns"
)

// discardWriter measures the handler alone: it accepts the reply bytes
// and keeps nothing.
type discardWriter struct{ fakeWriter }

func (*discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteMsg(m *dns.Msg) error {
	_, err := m.Pack()
	return err
}

func benchServer(b *testing.B, cfg Config) *Server {
	s := newTestServer(b, cfg)
	for i := range 1000 {
		mustRegister(b, s, "svc"+strconv.Itoa(i), netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}).String())
	}
	mustRegister(b, s, "web", "10.2.0.1", "10.2.0.2", "10.2.0.3")
	return s
}

func benchQuery(b *testing.B, s *Server, name string, qtype uint16) {
	w := &discardWriter{fakeWriter{remote: client4}}
	req := newQuery(name, qtype)
	b.ReportAllocs()
	for b.Loop() {
		s.ServeDNS(w, req)
	}
}

func BenchmarkZoneHit(b *testing.B) {
	s := benchServer(b, Config{})
	benchQuery(b, s, "web.prod.local.", dns.TypeA)
}

func BenchmarkZoneNXDOMAIN(b *testing.B) {
	s := benchServer(b, Config{})
	benchQuery(b, s, "missing.prod.local.", dns.TypeA)
}

func BenchmarkCacheHit(b *testing.B) {
	up := newStub(b, answerWith("192.0.2.1", 3600))
	s := benchServer(b, Config{Upstreams: []netip.AddrPort{up.addr}})
	ask(b, s, "www.example.org.", dns.TypeA) // fill the cache
	benchQuery(b, s, "www.example.org.", dns.TypeA)
	if up.queries.Load() != 1 {
		b.Fatalf("upstream saw %d queries; the benchmark did not measure cache hits", up.queries.Load())
	}
}

// BenchmarkZoneHitParallel shows that readers do not contend.
func BenchmarkZoneHitParallel(b *testing.B) {
	s := benchServer(b, Config{})
	req := newQuery("web.prod.local.", dns.TypeA)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{fakeWriter{remote: client4}}
		for pb.Next() {
			s.ServeDNS(w, req)
		}
	})
}

// BenchmarkRegister is the cost of one registration in a zone of 10,000
// names (copy-on-write of one shard).
func BenchmarkRegister(b *testing.B) {
	s := newTestServer(b, Config{})
	recs := map[string][]netip.Addr{}
	for i := range 10000 {
		recs["c"+strconv.Itoa(i)] = []netip.Addr{netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)})}
	}
	if err := s.Replace(recs); err != nil {
		b.Fatal(err)
	}
	addr := netip.MustParseAddr("10.4.0.1")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			s.Register("bench", addr)
		} else {
			s.Unregister("bench")
		}
		i++
	}
}

// BenchmarkUDPRoundTrip is a query through a real loopback socket, for
// comparison with dnsperf numbers (includes miekg/dns's server path).
func BenchmarkUDPRoundTrip(b *testing.B) {
	s := benchServer(b, Config{})
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		b.Fatal(err)
	}
	conn, err := net.Dial("udp", s.Listeners()[0].String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	req, _ := newQuery("web.prod.local.", dns.TypeA).Pack()
	buf := make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDatagram measures answerDatagram, the UDP path without sockets:
// the fast path for the queries it takes, the full path for the others.
func benchDatagram(b *testing.B, s *Server, req *dns.Msg) {
	pkt, err := req.Pack()
	if err != nil {
		b.Fatal(err)
	}
	space := make([]byte, 0, udpOutSize)
	from := client4.AddrPort()
	local := netip.MustParseAddrPort("127.0.0.1:53")
	send := func([]byte, netip.AddrPort) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if reply, job := s.answerDatagram(pkt, from, local, space, send); reply == nil || job != nil {
			b.Fatal("no inline answer")
		}
	}
}

func BenchmarkDatagramZoneHit(b *testing.B) {
	benchDatagram(b, benchServer(b, Config{}), newQuery("web.prod.local.", dns.TypeA))
}

func BenchmarkDatagramZoneNXDOMAIN(b *testing.B) {
	benchDatagram(b, benchServer(b, Config{}), newQuery("missing.prod.local.", dns.TypeA))
}

// BenchmarkDatagramFullPath is a query the fast path leaves to the full
// path (an apex SOA query), for comparison.
func BenchmarkDatagramFullPath(b *testing.B) {
	benchDatagram(b, benchServer(b, Config{}), newQuery("prod.local.", dns.TypeSOA))
}

// BenchmarkDatagramZoneHitFullPath is the per-query work the fast path
// replaces, for the same datagram as BenchmarkDatagramZoneHit: unpacking
// it into a dns.Msg, ServeDNS, packing the answer.
func BenchmarkDatagramZoneHitFullPath(b *testing.B) {
	s := benchServer(b, Config{})
	pkt, _ := newQuery("web.prod.local.", dns.TypeA).Pack()
	w := &discardWriter{fakeWriter{remote: client4}}
	b.ReportAllocs()
	for b.Loop() {
		r := new(dns.Msg)
		if err := r.Unpack(pkt); err != nil {
			b.Fatal(err)
		}
		s.ServeDNS(w, r)
	}
}
