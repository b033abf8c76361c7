package dns

import (
	"bufio"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// These tests drive the server through real sockets with the real dig
// binary as an independent client.

type digResult struct {
	out                           string
	status                        string
	flags                         []string
	ednsUDP                       int
	ednsDO                        bool
	answer, authority, additional [][]string // fields of each record line
}

func (r digResult) has(flag string) bool { return slices.Contains(r.flags, flag) }

// rdata returns the last field of each record of the given type in section.
func rdata(section [][]string, rtype string) []string {
	var out []string
	for _, f := range section {
		if len(f) >= 5 && f[3] == rtype {
			out = append(out, f[len(f)-1])
		}
	}
	return out
}

func digBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig is not installed (apt-get install --no-install-recommends dnsutils)")
	}
	return p
}

func digCmd(t *testing.T, server netip.AddrPort, args ...string) *exec.Cmd {
	t.Helper()
	base := []string{"@" + server.Addr().String(), "-p", strconv.Itoa(int(server.Port())), "+tries=1", "+timeout=5", "+nocookie"}
	return exec.Command(digBinary(t), append(base, args...)...)
}

func runDig(t *testing.T, server netip.AddrPort, args ...string) digResult {
	t.Helper()
	out, err := digCmd(t, server, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return parseDig(t, string(out))
}

func parseDig(t *testing.T, out string) digResult {
	t.Helper()
	r := digResult{out: out}
	var section *[][]string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ";; ->>HEADER<<-"):
			if _, rest, ok := strings.Cut(line, "status: "); ok {
				r.status, _, _ = strings.Cut(rest, ",")
			}
		case strings.HasPrefix(line, ";; flags:"):
			flags, _, _ := strings.Cut(strings.TrimPrefix(line, ";; flags:"), ";")
			r.flags = strings.Fields(flags)
		case strings.HasPrefix(line, "; EDNS:"):
			r.ednsDO = strings.Contains(line, "flags: do")
			if _, rest, ok := strings.Cut(line, "udp: "); ok {
				r.ednsUDP, _ = strconv.Atoi(strings.TrimSpace(rest))
			}
		case line == ";; ANSWER SECTION:":
			section = &r.answer
		case line == ";; AUTHORITY SECTION:":
			section = &r.authority
		case line == ";; ADDITIONAL SECTION:":
			section = &r.additional
		case line == "" || strings.HasPrefix(line, ";"):
			if line == "" {
				section = nil
			}
		case section != nil:
			*section = append(*section, strings.Fields(line))
		}
	}
	if r.status == "" {
		t.Fatalf("dig printed no header:\n%s", out)
	}
	return r
}

// listen starts a loopback listener on an ephemeral port.
func listen(t *testing.T, s *Server) netip.AddrPort {
	t.Helper()
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	return s.Listeners()[0]
}

func TestDigZone(t *testing.T) {
	digBinary(t)
	s := newTestServer(t, Config{ReversePrefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}})
	addr := listen(t, s)
	mustRegister(t, s, "web", "10.1.0.5", "fd00::5")

	t.Run("A", func(t *testing.T) {
		r := runDig(t, addr, "web.prod.local", "A")
		if r.status != "NOERROR" || !r.has("aa") || !slices.Equal(rdata(r.answer, "A"), []string{"10.1.0.5"}) {
			t.Fatalf("got:\n%s", r.out)
		}
		if ttl := r.answer[0][1]; ttl != "5" {
			t.Fatalf("TTL %s, want 5", ttl)
		}
	})
	t.Run("AAAA", func(t *testing.T) {
		r := runDig(t, addr, "WEB.Prod.Local", "AAAA")
		if !slices.Equal(rdata(r.answer, "AAAA"), []string{"fd00::5"}) {
			t.Fatalf("got:\n%s", r.out)
		}
	})
	t.Run("PTR", func(t *testing.T) {
		r := runDig(t, addr, "-x", "10.1.0.5")
		if !r.has("aa") || !slices.Equal(rdata(r.answer, "PTR"), []string{"web.prod.local."}) {
			t.Fatalf("got:\n%s", r.out)
		}
		r = runDig(t, addr, "-x", "fd00::5")
		if !slices.Equal(rdata(r.answer, "PTR"), []string{"web.prod.local."}) {
			t.Fatalf("got:\n%s", r.out)
		}
		r = runDig(t, addr, "-x", "10.1.9.9")
		if r.status != "NXDOMAIN" || len(rdata(r.authority, "SOA")) != 1 || r.authority[0][0] != "1.10.in-addr.arpa." {
			t.Fatalf("unknown address in a declared prefix; got:\n%s", r.out)
		}
	})
	t.Run("SOA and NS", func(t *testing.T) {
		r := runDig(t, addr, "prod.local", "SOA")
		if len(r.answer) != 1 || r.answer[0][3] != "SOA" || r.answer[0][4] != "ns.prod.local." || r.answer[0][len(r.answer[0])-1] != "5" {
			t.Fatalf("got:\n%s", r.out)
		}
		r = runDig(t, addr, "prod.local", "NS")
		if !slices.Equal(rdata(r.answer, "NS"), []string{"ns.prod.local."}) || !slices.Equal(rdata(r.additional, "A"), []string{"127.0.0.1"}) {
			t.Fatalf("want NS ns.prod.local. with glue 127.0.0.1; got:\n%s", r.out)
		}
	})
	t.Run("NODATA", func(t *testing.T) {
		mustRegister(t, s, "v4only", "10.1.0.6")
		r := runDig(t, addr, "v4only.prod.local", "AAAA")
		if r.status != "NOERROR" || len(r.answer) != 0 || len(rdata(r.authority, "SOA")) != 1 {
			t.Fatalf("got:\n%s", r.out)
		}
	})
	t.Run("NXDOMAIN after Unregister, re-register replaces", func(t *testing.T) {
		mustRegister(t, s, "moving", "10.1.0.7")
		if err := s.Unregister("moving"); err != nil {
			t.Fatal(err)
		}
		r := runDig(t, addr, "moving.prod.local", "A")
		if r.status != "NXDOMAIN" || len(rdata(r.authority, "SOA")) != 1 || !r.has("aa") {
			t.Fatalf("got:\n%s", r.out)
		}
		mustRegister(t, s, "moving", "10.1.0.8")
		r = runDig(t, addr, "moving.prod.local", "A")
		if !slices.Equal(rdata(r.answer, "A"), []string{"10.1.0.8"}) {
			t.Fatalf("want only the new address; got:\n%s", r.out)
		}
	})
	t.Run("round robin", func(t *testing.T) {
		mustRegister(t, s, "rr", "10.1.0.11", "10.1.0.12", "10.1.0.13")
		firsts := map[string]bool{}
		for range 3 {
			got := rdata(runDig(t, addr, "rr.prod.local", "A").answer, "A")
			if len(got) != 3 {
				t.Fatalf("answer %v", got)
			}
			firsts[got[0]] = true
		}
		if len(firsts) != 3 {
			t.Fatalf("three answers began with %v; want each address first once", firsts)
		}
	})
	t.Run("TCP", func(t *testing.T) {
		r := runDig(t, addr, "+tcp", "web.prod.local", "A")
		if !slices.Equal(rdata(r.answer, "A"), []string{"10.1.0.5"}) {
			t.Fatalf("got:\n%s", r.out)
		}
	})
}

// digUpstream answers by name: tc.* truncates over UDP, edns.* replies
// with its own OPT, hold.* waits for release, anything else gets an A.
func digUpstream(t *testing.T, arrived chan<- struct{}, release <-chan struct{}) *stub {
	return newStub(t, func(w dns.ResponseWriter, r *dns.Msg) {
		name := r.Question[0].Name
		_, tcp := w.RemoteAddr().(*net.TCPAddr)
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		switch {
		case strings.HasPrefix(name, "tc.") && !tcp:
			m.Truncated = true
			w.WriteMsg(m)
			return
		case strings.HasPrefix(name, "hold."):
			arrived <- struct{}{}
			<-release
		}
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.IPv4(192, 0, 2, 50)}}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(1400, opt.Do())
		}
		w.WriteMsg(m)
	})
}

// dig for a name with 100 A records, claiming a large buffer, gets at
// most 1,232 bytes over UDP, with TC (+ignore keeps dig from retrying over
// TCP); over TCP it gets all 100. dig 9.18 sends 1232 in place of any
// +bufsize of 32768 or more, so 16384 is the claim that actually reaches
// the server as a large one (the miekg/dns tests send 65000 itself).
func TestDigUDPAnswerSizeIsCapped(t *testing.T) {
	digBinary(t)
	s := newTestServer(t, Config{})
	addr := listen(t, s)
	var addrs []netip.Addr
	for i := range 100 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 1, 3, byte(i + 1)}))
	}
	if err := s.Set("hundred", addrs...); err != nil {
		t.Fatal(err)
	}
	for _, bufsize := range []string{"16384", "65000"} {
		r := runDig(t, addr, "+bufsize="+bufsize, "+ignore", "hundred.prod.local", "A")
		size := msgSize(t, r.out)
		if size > 1232 || !r.has("tc") || len(r.answer) >= 100 {
			t.Fatalf("+bufsize=%s: UDP answer of %d bytes, flags %v, %d records; want at most 1232 bytes with TC\n%s", bufsize, size, r.flags, len(r.answer), r.out)
		}
	}
	r := runDig(t, addr, "+bufsize=65000", "+tcp", "hundred.prod.local", "A")
	if r.has("tc") || len(r.answer) != 100 {
		t.Fatalf("TCP answer: flags %v, %d records; want all 100\n%s", r.flags, len(r.answer), r.out)
	}
}

// msgSize is the size dig reports for the answer it received.
func msgSize(t *testing.T, out string) int {
	t.Helper()
	_, rest, ok := strings.Cut(out, ";; MSG SIZE  rcvd: ")
	if !ok {
		t.Fatalf("dig printed no message size:\n%s", out)
	}
	n, err := strconv.Atoi(strings.Fields(rest)[0])
	if err != nil {
		t.Fatalf("dig message size: %v\n%s", err, out)
	}
	return n
}

func TestDigForwarding(t *testing.T) {
	digBinary(t)
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	up := digUpstream(t, arrived, release)
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, ForwardTimeout: time.Minute})
	addr := listen(t, s)
	mustRegister(t, s, "web", "10.1.0.5")

	t.Run("forward and cache", func(t *testing.T) {
		r := runDig(t, addr, "www.example.org", "A")
		if r.status != "NOERROR" || r.has("aa") || !r.has("ra") || !slices.Equal(rdata(r.answer, "A"), []string{"192.0.2.50"}) {
			t.Fatalf("got:\n%s", r.out)
		}
		runDig(t, addr, "www.example.org", "A")
		if n := countQueries(up, "www.example.org."); n != 1 {
			t.Fatalf("upstream saw %d queries for two client queries; want 1 (cache)", n)
		}
	})
	t.Run("truncated upstream answer is retried over TCP", func(t *testing.T) {
		r := runDig(t, addr, "+ignore", "tc.example.org", "A")
		if r.has("tc") || len(rdata(r.answer, "A")) != 1 {
			t.Fatalf("got:\n%s", r.out)
		}
		var udp, tcp int
		for _, q := range up.received() {
			if q.msg.Question[0].Name == "tc.example.org." {
				if q.tcp {
					tcp++
				} else {
					udp++
				}
			}
		}
		if udp != 1 || tcp != 1 {
			t.Fatalf("upstream saw %d UDP and %d TCP queries; want one of each", udp, tcp)
		}
	})
	t.Run("EDNS passthrough", func(t *testing.T) {
		r := runDig(t, addr, "+bufsize=1300", "+dnssec", "edns.example.org", "A")
		var sent *dns.OPT
		for _, q := range up.received() {
			if q.msg.Question[0].Name == "edns.example.org." {
				sent = q.msg.IsEdns0()
			}
		}
		if sent == nil || sent.UDPSize() != 1300 || !sent.Do() {
			t.Fatalf("upstream saw OPT %v; want dig's size 1300 and DO", sent)
		}
		if r.ednsUDP != 1400 || !r.ednsDO {
			t.Fatalf("dig saw EDNS udp=%d do=%v; want the upstream's OPT (1400, do)\n%s", r.ednsUDP, r.ednsDO, r.out)
		}
	})
	t.Run("zone answers while a forward is pending", func(t *testing.T) {
		pending := digCmd(t, addr, "hold.example.org", "A")
		var out strings.Builder
		pending.Stdout = &out
		if err := pending.Start(); err != nil {
			t.Fatal(err)
		}
		finished := make(chan error, 1)
		go func() { finished <- pending.Wait() }()
		<-arrived // the forward is now held at the upstream
		r := runDig(t, addr, "web.prod.local", "A")
		if !slices.Equal(rdata(r.answer, "A"), []string{"10.1.0.5"}) {
			t.Fatalf("got:\n%s", r.out)
		}
		select {
		case err := <-finished:
			t.Fatalf("the held forward finished (%v) before release; the test proves nothing", err)
		default:
		}
		close(release)
		if err := <-finished; err != nil {
			t.Fatalf("held forward: %v\n%s", err, out.String())
		}
		if r := parseDig(t, out.String()); len(rdata(r.answer, "A")) != 1 {
			t.Fatalf("released forward:\n%s", r.out)
		}
	})
}

func countQueries(st *stub, name string) int {
	n := 0
	for _, q := range st.received() {
		if q.msg.Question[0].Name == name {
			n++
		}
	}
	return n
}

func TestDigDeadUpstreamServfailsAndZoneStillAnswers(t *testing.T) {
	digBinary(t)
	dead := newStub(t, func(dns.ResponseWriter, *dns.Msg) {})
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{dead.addr}}) // default 2 s timeout
	addr := listen(t, s)
	mustRegister(t, s, "web", "10.1.0.5")

	// dig gives up after +timeout=5: SERVFAIL must come before that.
	r := runDig(t, addr, "gone.example.org", "A")
	if r.status != "SERVFAIL" {
		t.Fatalf("got:\n%s", r.out)
	}
	if r := runDig(t, addr, "web.prod.local", "A"); len(rdata(r.answer, "A")) != 1 {
		t.Fatalf("got:\n%s", r.out)
	}
}

func TestDigRefusesRecursionForDisallowedClients(t *testing.T) {
	digBinary(t)
	up := newStub(t, answerWith("192.0.2.60", 60))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}, AllowRecursion: func(netip.Addr) bool { return false }})
	addr := listen(t, s)
	mustRegister(t, s, "web", "10.1.0.5")
	if r := runDig(t, addr, "example.org", "A"); r.status != "REFUSED" || r.has("ra") {
		t.Fatalf("got:\n%s", r.out)
	}
	if r := runDig(t, addr, "web.prod.local", "A"); len(rdata(r.answer, "A")) != 1 {
		t.Fatalf("got:\n%s", r.out)
	}
	if up.queries.Load() != 0 {
		t.Fatal("a refused query reached the upstream")
	}
}
