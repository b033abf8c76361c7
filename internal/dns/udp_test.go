package dns

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startUDP serves s on a fresh UDP socket at addr with the given reader
// count and datagram I/O (nil: the platform's), and stops it at cleanup.
func startUDP(t testing.TB, s *Server, addr string, readers int, newIO func(*net.UDPConn) datagramIO) netip.AddrPort {
	t.Helper()
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Skipf("cannot bind %s: %v", addr, err)
	}
	var done sync.WaitGroup
	u, err := newUDPServer(s, conn, &done)
	if err != nil {
		t.Fatal(err)
	}
	if newIO != nil {
		u.newIO = newIO
	}
	u.start(readers)
	t.Cleanup(func() {
		u.stop(0)
		done.Wait()
	})
	return u.local
}

// burstWindow is how many queries burst keeps outstanding: more than a
// batch, few enough that the server's socket buffer never overflows
// (UDP would drop the excess, legitimately).
const burstWindow = 48

// burst sends copies of the queries on one socket, burstWindow at a time
// without waiting, reads the answers in whatever order they come and
// checks each against its query.
func burst(server netip.AddrPort, queries []*dns.Msg, check func(q, a *dns.Msg) error) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		return err
	}
	defer conn.Close()
	buf := make([]byte, 65535)
	for len(queries) > 0 {
		window := queries[:min(burstWindow, len(queries))]
		queries = queries[len(window):]
		byID := map[uint16]*dns.Msg{}
		for i, q := range window {
			q = q.Copy()
			q.Id = uint16(i + 1)
			byID[q.Id] = q
			b, err := q.Pack()
			if err != nil {
				return err
			}
			if _, err := conn.Write(b); err != nil {
				return err
			}
		}
		for len(byID) > 0 {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang guard
			n, err := conn.Read(buf)
			if err != nil {
				return fmt.Errorf("%d queries unanswered: %w", len(byID), err)
			}
			a := new(dns.Msg)
			if err := a.Unpack(buf[:n]); err != nil {
				return fmt.Errorf("unparseable answer: %w", err)
			}
			q, ok := byID[a.Id]
			if !ok {
				return fmt.Errorf("answer with unknown or repeated id %d", a.Id)
			}
			delete(byID, a.Id)
			if len(a.Question) != 1 || a.Question[0] != q.Question[0] {
				return fmt.Errorf("answer %d is for %v, its query asked %v", a.Id, a.Question, q.Question)
			}
			if err := check(q, a); err != nil {
				return fmt.Errorf("answer to %v: %w\n%v", q.Question[0], err, a)
			}
		}
	}
	return nil
}

// Bursts of queries, many to a batch, mixing fast-path answers, full-path
// answers on the reader (apex SOA, truncation) and NXDOMAIN: every answer
// reaches its client intact, whatever the batching, over IPv4 and IPv6
// and with both datagram I/O implementations.
func TestUDPLoopAnswersEveryQueryOfABurst(t *testing.T) {
	s := newTestServer(t, Config{})
	for i := range 50 {
		mustRegister(t, s, "svc"+strconv.Itoa(i), fmt.Sprintf("10.1.0.%d", i+1))
	}
	var many []netip.Addr
	for i := range 60 {
		many = append(many, netip.AddrFrom4([4]byte{10, 2, 0, byte(i + 1)}))
	}
	if err := s.Set("big", many...); err != nil {
		t.Fatal(err)
	}
	var queries []*dns.Msg
	for i := range 300 {
		switch i % 6 {
		case 0:
			queries = append(queries, newQuery("prod.local.", dns.TypeSOA))
		case 1:
			queries = append(queries, newQuery("missing"+strconv.Itoa(i)+".prod.local.", dns.TypeA))
		case 2:
			queries = append(queries, newQuery("big.prod.local.", dns.TypeA))
		default:
			queries = append(queries, newQuery("svc"+strconv.Itoa(i%50)+".prod.local.", dns.TypeA))
		}
	}
	check := func(q, a *dns.Msg) error {
		name := q.Question[0].Name
		switch {
		case name == "prod.local.":
			if len(a.Answer) != 1 || a.Answer[0].Header().Rrtype != dns.TypeSOA {
				return fmt.Errorf("want the SOA")
			}
		case name == "big.prod.local.":
			if !a.Truncated {
				return fmt.Errorf("want TC (60 records do not fit 512 bytes)")
			}
		case name[:7] == "missing":
			if a.Rcode != dns.RcodeNameError {
				return fmt.Errorf("want NXDOMAIN")
			}
		default:
			i, _ := strconv.Atoi(name[3 : len(name)-len(".prod.local.")])
			if got := answerAddrs(a); !slices.Equal(got, []string{fmt.Sprintf("10.1.0.%d", i+1)}) {
				return fmt.Errorf("addresses %v", got)
			}
		}
		return nil
	}
	for _, io := range []struct {
		name  string
		newIO func(*net.UDPConn) datagramIO
	}{{"platform", nil}, {"single", func(c *net.UDPConn) datagramIO { return singleIO{c} }}} {
		for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
			t.Run(io.name+" "+addr, func(t *testing.T) {
				server := startUDP(t, s, addr, 2, io.newIO)
				var wg sync.WaitGroup
				for range 3 {
					wg.Go(func() {
						if err := burst(server, queries, check); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
			})
		}
	}
}

// More queries waiting for a held upstream than the readers can hold in
// their batches, and still a zone name is answered: upstream waits happen
// off the readers.
func TestUDPLoopZoneAnswersWhileForwardsWait(t *testing.T) {
	release := make(chan struct{})
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		<-release
		answerWith("192.0.2.9", 60)(w, r)
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, ForwardTimeout: time.Minute})
	mustRegister(t, s, "web", "10.1.0.5")
	const readers = 2
	server := startUDP(t, s, "127.0.0.1:0", readers, nil)

	forwards := readers*udpBatchSize + 10
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range forwards {
		q := newQuery("held"+strconv.Itoa(i)+".example.org.", dns.TypeA)
		q.Id = uint16(i + 1)
		b, _ := q.Pack()
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every forward to reach the upstream", func() bool { return up.queries.Load() == int64(forwards) })

	if got := answerAddrs(netAsk(t, "udp", server, "web.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"10.1.0.5"}) {
		t.Fatalf("zone answer %v", got)
	}
	conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 512)); err == nil {
		t.Fatal("a held forward was answered before its upstream answered; the test proves nothing")
	}

	close(release)
	buf := make([]byte, 512)
	for range forwards {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang guard
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("released forwards: %v", err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil || len(m.Answer) != 1 {
			t.Fatalf("released forward answered %v (%v)", m, err)
		}
	}
}

// Close waits for upstream jobs the readers handed off: when it returns,
// the held forward has failed and answered (or tried to), and nothing of
// the server runs any more.
func TestCloseWaitsForUpstreamJobs(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	up := newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		arrived <- struct{}{}
		<-release
	})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, ForwardTimeout: time.Minute})
	addr := listen(t, s)
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b, _ := newQuery("held.example.org.", dns.TypeA).Pack()
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	<-arrived
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.UpstreamErrors != 1 || st.Responses["SERVFAIL"] != 1 {
		t.Fatalf("after Close: %d upstream errors, %d SERVFAIL; want the held forward to have failed before Close returned", st.UpstreamErrors, st.Responses["SERVFAIL"])
	}
}
