package dns

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// netAsk queries addr over the network ("udp" or "tcp").
func netAsk(t *testing.T, network string, addr netip.AddrPort, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	m, _, err := c.Exchange(newQuery(name, qtype), addr.String())
	if err != nil {
		t.Fatalf("%s query to %v: %v", network, addr, err)
	}
	return m
}

func TestSetListenersServesUDPAndTCP(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "web", "10.1.0.5")
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	ls := s.Listeners()
	if len(ls) != 1 || ls[0].Addr() != loopback4 || ls[0].Port() == 0 {
		t.Fatalf("Listeners() = %v; want 127.0.0.1 with the bound port", ls)
	}
	for _, network := range []string{"udp", "tcp"} {
		if got := answerAddrs(netAsk(t, network, ls[0], "web.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"10.1.0.5"}) {
			t.Fatalf("%s answer %v", network, got)
		}
	}
}

func TestSetListenersKeepsUnchangedListeners(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "web", "10.1.0.5")
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	kept := s.Listeners()[0]

	// A TCP connection to the kept listener survives both changes below:
	// the listener is never stopped, not even briefly.
	conn, err := dns.DialTimeout("tcp", kept.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tcpAsk := func() {
		t.Helper()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if err := conn.WriteMsg(newQuery("web.prod.local.", dns.TypeA)); err != nil {
			t.Fatalf("kept listener's connection: %v", err)
		}
		m, err := conn.ReadMsg()
		if err != nil || len(m.Answer) != 1 {
			t.Fatalf("kept listener's connection: %v %v", m, err)
		}
	}
	tcpAsk()

	added := netip.MustParseAddrPort("127.0.0.2:0")
	if err := s.SetListeners([]netip.AddrPort{kept, added}); err != nil {
		t.Fatal(err)
	}
	ls := s.Listeners()
	if len(ls) != 2 || ls[0] != kept {
		t.Fatalf("after adding: %v; want %v kept and a second listener", ls, kept)
	}
	second := ls[1]
	netAsk(t, "udp", second, "web.prod.local.", dns.TypeA)
	tcpAsk()

	if err := s.SetListeners([]netip.AddrPort{kept}); err != nil {
		t.Fatal(err)
	}
	if ls := s.Listeners(); !slices.Equal(ls, []netip.AddrPort{kept}) {
		t.Fatalf("after removing: %v", ls)
	}
	tcpAsk()
	// The removed listener's sockets are gone: the port can be bound again.
	pc, err := net.ListenPacket("udp", second.String())
	if err != nil {
		t.Fatalf("removed listener still holds %v: %v", second, err)
	}
	pc.Close()
}

func TestSetListenersRefusesWildcards(t *testing.T) {
	s := newTestServer(t, Config{})
	for _, a := range []string{"0.0.0.0:53", "[::]:53", "[::ffff:0.0.0.0]:53"} {
		err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort(a)})
		if err == nil || !strings.Contains(err.Error(), "wildcard") {
			t.Errorf("SetListeners with %s: err = %v; want a wildcard refusal", a, err)
		}
	}
	if ls := s.Listeners(); len(ls) != 0 {
		t.Fatalf("a refused call started listeners: %v", ls)
	}
}

func TestSetListenersNamesTheAddressItCannotBind(t *testing.T) {
	taken, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := taken.LocalAddr().(*net.UDPAddr).AddrPort()

	s := newTestServer(t, Config{})
	err = s.SetListeners([]netip.AddrPort{busy, netip.MustParseAddrPort("127.0.0.1:0")})
	if err == nil || !strings.Contains(err.Error(), busy.String()) {
		t.Fatalf("err = %v; want one naming %v", err, busy)
	}
	ls := s.Listeners()
	if len(ls) != 1 || ls[0] == busy {
		t.Fatalf("Listeners() = %v; want the other address served", ls)
	}
	netAsk(t, "udp", ls[0], "prod.local.", dns.TypeSOA)
}

func TestCloseStopsListeners(t *testing.T) {
	s := newTestServer(t, Config{})
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	addr := s.Listeners()[0]
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("after Close %v is still bound: %v", addr, err)
	}
	ln.Close()
	if err := s.SetListeners([]netip.AddrPort{addr}); err == nil {
		t.Fatal("SetListeners worked on a closed server")
	}
}
