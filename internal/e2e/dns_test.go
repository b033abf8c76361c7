//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

const envStub = "ZLAYER_E2E_DNS_STUB"

// TestDNSStubHelper is not a test: re-executed inside a node's namespace
// it is the "host's upstream resolver" the daemon forwards to.
func TestDNSStubHelper(t *testing.T) {
	addr := os.Getenv(envStub)
	if addr == "" {
		t.Skip("helper process for TestDNS")
	}
	mdns.HandleFunc(".", func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Name == "ext.example." && q.Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.99")})
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	srv := &mdns.Server{Addr: addr, Net: "udp"}
	if err := srv.ListenAndServe(); err != nil {
		t.Fatal(err)
	}
}

// startStub runs the stub upstream inside node n's namespace.
func startStub(t *testing.T, n *lab.Node, addr string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.NS, os.Args[0], "-test.run=^TestDNSStubHelper$")
	cmd.Env = append(os.Environ(), envStub+"="+addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// dig runs dig inside the node (or container) and returns its output.
func dig(exec func(...string) (string, error), server string, port int, args ...string) string {
	all := append([]string{"dig", "@" + server, "-p", fmt.Sprint(port), "+time=5", "+tries=1"}, args...)
	out, _ := exec(all...)
	return out
}

func digShort(exec func(...string) (string, error), server string, port int, args ...string) string {
	return strings.TrimSpace(dig(exec, server, port, append([]string{"+short"}, args...)...))
}

func TestDNS(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (apt-get install dnsutils)")
	}
	l := newLab(t)
	a := l.AddNode("a", "--dns-upstream", "127.0.0.2:5300")
	startStub(t, a, "127.0.0.2:5300")
	st := setupGlobal(t, []*lab.Node{a})
	web := a.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	zone := "prod.local"
	lo := func(args ...string) string { return digShort(a.Exec, "127.0.0.1", 15353, args...) }

	a.Call(protocol.RegisterDNS{Name: "web", IP: web.Gateway.Next()})
	a.Call(protocol.RegisterDNS{Name: "web", IP: web.Gateway.Next().Next()})
	a.Call(protocol.RegisterDNS{Name: "db." + zone + ".", IP: mustAddr("fd00:200::5")})
	if got := lo("web."+zone, "A"); !strings.Contains(got, web.Gateway.Next().String()) || !strings.Contains(got, web.Gateway.Next().Next().String()) {
		t.Fatalf("A web: %q", got)
	}
	if got := lo("DB."+strings.ToUpper(zone), "AAAA"); got != "fd00:200::5" {
		t.Fatalf("AAAA db (case-insensitive): %q", got)
	}
	if got := lo("-x", web.Gateway.Next().String()); got != "web."+zone+"." {
		t.Fatalf("PTR: %q", got)
	}
	if got := lo(zone, "SOA"); !strings.HasPrefix(got, "ns."+zone+".") {
		t.Fatalf("SOA: %q", got)
	}
	if got := lo(zone, "NS"); got != "ns."+zone+"." {
		t.Fatalf("NS: %q", got)
	}
	// NODATA: a name with only AAAA asked for A.
	if out := dig(a.Exec, "127.0.0.1", 15353, "db."+zone, "A"); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "ANSWER: 0") || !strings.Contains(out, "SOA") {
		t.Fatalf("NODATA:\n%s", out)
	}
	// Unregister: NXDOMAIN with the SOA; a re-register does not bring the
	// old address back.
	a.Call(protocol.UnregisterDNS{Name: "web"})
	if out := dig(a.Exec, "127.0.0.1", 15353, "web."+zone, "A"); !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "IN\tSOA") {
		t.Fatalf("after unregister:\n%s", out)
	}
	a.Call(protocol.RegisterDNS{Name: "web", IP: mustAddr("10.200.1.77")})
	if got := lo("web."+zone, "A"); got != "10.200.1.77" {
		t.Fatalf("re-registered: %q", got)
	}
	// Forwarding through the host's upstream.
	if got := lo("ext.example", "A"); got != "192.0.2.99" {
		t.Fatalf("forwarded: %q", got)
	}
	// Names outside the zone must be inside it when absolute.
	if msg := errMessage(a.Do(protocol.RegisterDNS{Name: "evil.example.", IP: mustAddr("10.0.0.1")})); !strings.Contains(msg, "zone") {
		t.Fatalf("absolute name outside the zone: %q", msg)
	}
	// From inside a container attached to web, via the bridge gateway.
	c := l.AddContainer("c")
	att := a.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web"}).(protocol.Attached)
	if att.DNSServer != web.Gateway || att.DNSDomain != zone {
		t.Fatalf("attach answer DNS: %+v", att)
	}
	if got := digShort(c.Exec, web.Gateway.String(), 53, "web."+zone, "A"); got != "10.200.1.77" {
		t.Fatalf("from the container: %q", got)
	}
	// And via the node IP.
	if got := digShort(a.Exec, st[0].NodeIP.String(), 53, "web."+zone, "A"); got != "10.200.1.77" {
		t.Fatalf("via the node IP: %q", got)
	}
	s := a.Status()
	// register_dns delegated the node's DNS to us: our own loopback port,
	// the gateway, and the main daemon's three addresses.
	if s.DNS == nil || s.DNS.Zone != zone+"." || s.DNS.Records != 2 || len(s.DNS.Listeners) != 5 || !s.DNS.Delegated {
		t.Fatalf("status dns %+v", s.DNS)
	}
	// Records survive a crash.
	a.Kill()
	a.Start()
	if got := lo("web."+zone, "A"); got != "10.200.1.77" {
		t.Fatalf("after restart: %q", got)
	}
	if got := lo("db."+zone, "AAAA"); got != "fd00:200::5" {
		t.Fatalf("after restart: %q", got)
	}
}

// A dead upstream: SERVFAIL within 5 s, while zone names answer at once.
func TestDNSDeadUpstream(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (apt-get install dnsutils)")
	}
	l := newLab(t)
	// Nothing answers on this underlay address: queries to it time out.
	a := l.AddNode("a", "--dns-upstream", "172.31.0.250:53")
	setupGlobal(t, []*lab.Node{a})
	a.Call(protocol.RegisterDNS{Name: "web", IP: mustAddr("10.200.1.5")})
	var wg sync.WaitGroup
	var fwd string
	wg.Add(1)
	go func() {
		defer wg.Done()
		// dig gives up after 5 s (+time=5 +tries=1): a SERVFAIL in its
		// output arrived within that bound.
		fwd = dig(a.Exec, "127.0.0.1", 15353, "nowhere.example", "A")
	}()
	time.Sleep(300 * time.Millisecond) // the forward is now pending
	if got := digShort(a.Exec, "127.0.0.1", 15353, "web.prod.local", "A"); got != "10.200.1.5" {
		t.Fatalf("zone answer while the upstream hangs: %q", got)
	}
	wg.Wait()
	if !strings.Contains(fwd, "status: SERVFAIL") {
		t.Fatalf("dead upstream: want SERVFAIL within 5 s:\n%s", fwd)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// A name with 100 A records, asked for over UDP by a client claiming a
// huge buffer, gets at most 1,232 bytes with TC; over TCP all 100. dig
// 9.18 sends 1232 for +bufsize of 32768 or more, so 16384 is asked too.
func TestDNSUDPAnswerSizeIsCapped(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (apt-get install dnsutils)")
	}
	l := newLab(t)
	a := l.AddNode("a")
	st := setupGlobal(t, []*lab.Node{a})
	for i := range 100 {
		a.Call(protocol.RegisterDNS{Name: "hundred", IP: netip.AddrFrom4([4]byte{10, 200, 9, byte(i + 1)})})
	}
	for _, bufsize := range []string{"65000", "16384"} {
		out := dig(a.Exec, st[0].NodeIP.String(), 53, "+bufsize="+bufsize, "+ignore", "hundred.prod.local", "A")
		_, rest, ok := strings.Cut(out, "MSG SIZE  rcvd: ")
		if !ok {
			t.Fatalf("+bufsize=%s: no answer:\n%s", bufsize, out)
		}
		var size int
		fmt.Sscan(rest, &size)
		if size > 1232 || !strings.Contains(out, "flags: qr aa tc") {
			t.Fatalf("+bufsize=%s: UDP answer of %d bytes; want at most 1232 with TC:\n%s", bufsize, size, out)
		}
	}
	if out := dig(a.Exec, st[0].NodeIP.String(), 53, "+tcp", "hundred.prod.local", "A"); !strings.Contains(out, "ANSWER: 100,") {
		t.Fatalf("over TCP: want all 100 records:\n%s", out)
	}
}
