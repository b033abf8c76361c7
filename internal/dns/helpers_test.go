package dns

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	client4   = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	remote4   = &net.UDPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000} // not loopback: no recursion by default
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeWriter is a dns.ResponseWriter that records what the handler sends.
type fakeWriter struct {
	remote net.Addr
	mu     sync.Mutex
	wire   [][]byte
}

func (w *fakeWriter) LocalAddr() net.Addr {
	if _, ok := w.remote.(*net.TCPAddr); ok {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (w *fakeWriter) RemoteAddr() net.Addr { return w.remote }
func (w *fakeWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *fakeWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wire = append(w.wire, append([]byte(nil), b...))
	return len(b), nil
}
func (w *fakeWriter) Close() error        { return nil }
func (w *fakeWriter) TsigStatus() error   { return nil }
func (w *fakeWriter) TsigTimersOnly(bool) {}
func (w *fakeWriter) Hijack()             {}

// replies unpacks everything written.
func (w *fakeWriter) replies(t testing.TB) []*dns.Msg {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*dns.Msg
	for _, b := range w.wire {
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatalf("handler wrote an unparseable message (%d bytes): %v", len(b), err)
		}
		out = append(out, m)
	}
	return out
}

// exchange runs one query through ServeDNS and returns the single reply.
func exchange(t testing.TB, s *Server, from net.Addr, req *dns.Msg) *dns.Msg {
	t.Helper()
	w := &fakeWriter{remote: from}
	s.ServeDNS(w, req)
	rs := w.replies(t)
	if len(rs) != 1 {
		t.Fatalf("query %v: got %d replies, want 1", req.Question, len(rs))
	}
	if rs[0].Id != req.Id || !rs[0].Response {
		t.Fatalf("reply id=%d response=%v does not answer query id=%d", rs[0].Id, rs[0].Response, req.Id)
	}
	return rs[0]
}

func newQuery(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// ask sends a plain UDP query from loopback.
func ask(t testing.TB, s *Server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return exchange(t, s, client4, newQuery(name, qtype))
}

func newTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Zone == "" {
		cfg.Zone = "prod.local"
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustRegister(t testing.TB, s *Server, name string, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		if err := s.Register(name, netip.MustParseAddr(a)); err != nil {
			t.Fatal(err)
		}
	}
}

// answerAddrs lists the A/AAAA addresses of an answer in order.
func answerAddrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	return out
}

func soaOf(m *dns.Msg) *dns.SOA {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa
		}
	}
	return nil
}

// stub is a tiny upstream resolver on a loopback port (UDP and TCP).
type stub struct {
	addr    netip.AddrPort
	handler func(w dns.ResponseWriter, r *dns.Msg)
	queries atomic.Int64
	mu      sync.Mutex
	seen    []seenQuery
}

type seenQuery struct {
	msg *dns.Msg
	tcp bool
}

func (st *stub) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	st.queries.Add(1)
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	st.mu.Lock()
	st.seen = append(st.seen, seenQuery{msg: r.Copy(), tcp: tcp})
	st.mu.Unlock()
	st.handler(w, r)
}

func (st *stub) received() []seenQuery {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]seenQuery(nil), st.seen...)
}

// newStub starts an upstream on 127.0.0.1 that answers with handler.
func newStub(t testing.TB, handler func(w dns.ResponseWriter, r *dns.Msg)) *stub {
	t.Helper()
	st := &stub{handler: handler}
	var pc net.PacketConn
	var ln net.Listener
	for range 8 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("cannot bind a stub upstream on 127.0.0.1")
	}
	st.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: st}, {Listener: ln, Handler: st}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return st
}

// answerWith returns a handler that answers every A query with addr and ttl.
func answerWith(addr string, ttl uint32) func(dns.ResponseWriter, *dns.Msg) {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		if r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
				A:   net.ParseIP(addr),
			})
		}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), opt.Do())
		}
		w.WriteMsg(m)
	}
}

// fakeClock is a settable clock for cache ageing.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline (a hang guard, not a timing assertion).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
