//go:build linux

package dns

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// ipCmd runs ip(8) for test setup and fails the test with its output.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
}

// inNetns runs fn on a thread inside the named network namespace. The
// thread stays locked and dies with the goroutine, so no other goroutine
// ever runs in that namespace; sockets created by fn stay in it.
func inNetns(t *testing.T, name string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// A container on a bridge queries the gateway address on port 53: names
// of the zone are answered, recursion is refused (the default policy is
// loopback only) and the NS glue is the gateway address. The same address
// reached through another interface (the underlay) answers nothing, over
// UDP or TCP, even for a source address inside the container's subnet:
// what counts is the interface a query arrives on.
func TestNetnsGatewayListener(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and bind port 53")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) is not installed")
	}
	digBinary(t)

	b := make([]byte, 3)
	rand.Read(b)
	suffix := hex.EncodeToString(b)
	srvNS, cliNS, outNS := "zltd-s-"+suffix, "zltd-c-"+suffix, "zltd-o-"+suffix
	for _, ns := range []string{srvNS, cliNS, outNS} {
		ipCmd(t, "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	}
	gw, peer := "zltd"+suffix+"g", "zltd"+suffix+"c"
	ipCmd(t, "link", "add", gw, "netns", srvNS, "type", "veth", "peer", "name", peer, "netns", cliNS)
	ipCmd(t, "-n", srvNS, "addr", "add", "10.231.7.1/24", "dev", gw)
	ipCmd(t, "-n", srvNS, "link", "set", gw, "up")
	ipCmd(t, "-n", cliNS, "addr", "add", "10.231.7.2/24", "dev", peer)
	ipCmd(t, "-n", cliNS, "link", "set", peer, "up")
	// The underlay: a neighbour that routes the container subnet via the
	// server and owns an address of that subnet, to spoof with.
	up, far := "zltd"+suffix+"u", "zltd"+suffix+"f"
	ipCmd(t, "link", "add", up, "netns", srvNS, "type", "veth", "peer", "name", far, "netns", outNS)
	ipCmd(t, "-n", srvNS, "addr", "add", "10.231.8.1/24", "dev", up)
	ipCmd(t, "-n", srvNS, "link", "set", up, "up")
	ipCmd(t, "-n", outNS, "addr", "add", "10.231.8.2/24", "dev", far)
	ipCmd(t, "-n", outNS, "addr", "add", "10.231.7.99/32", "dev", far)
	ipCmd(t, "-n", outNS, "link", "set", far, "up")
	ipCmd(t, "-n", outNS, "route", "add", "10.231.7.0/24", "via", "10.231.8.1")

	up1 := newStub(t, answerWith("192.0.2.70", 60))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up1.addr}, AllowRecursion: func(a netip.Addr) bool { return a.IsLoopback() }})
	mustRegister(t, s, "web", "10.231.7.10")
	gateway := netip.MustParseAddrPort("10.231.7.1:53")
	inNetns(t, srvNS, func() error {
		return s.SetListeners([]netip.AddrPort{gateway, netip.MustParseAddrPort("127.0.0.1:0")})
	})
	if ls := s.Listeners(); len(ls) != 2 || ls[0] != gateway {
		t.Fatalf("Listeners() = %v", ls)
	}

	digFrom := func(ns string, args ...string) (digResult, bool) {
		t.Helper()
		cmd := append([]string{"netns", "exec", ns, digBinary(t), "@10.231.7.1", "-p", strconv.Itoa(int(gateway.Port())), "+tries=1", "+timeout=2"}, args...)
		out, err := exec.Command("ip", cmd...).CombinedOutput()
		if err != nil {
			return digResult{out: string(out)}, false
		}
		return parseDig(t, string(out)), true
	}
	digFromClient := func(args ...string) digResult {
		t.Helper()
		r, ok := digFrom(cliNS, args...)
		if !ok {
			t.Fatalf("dig %v from the client namespace:\n%s", args, r.out)
		}
		return r
	}
	unanswered := func(what, ns string, args ...string) {
		t.Helper()
		before := s.Stats()
		for _, proto := range []string{"+notcp", "+tcp"} {
			if r, ok := digFrom(ns, append([]string{proto}, args...)...); ok {
				t.Errorf("%s (%s) was answered:\n%s", what, proto, r.out)
			}
		}
		// The UDP query is refused for its interface; a TCP handshake from
		// a spoofed source never completes (the SYN-ACK goes to the real
		// owner), so only the other TCP connection is counted.
		after := s.Stats()
		if after.WrongInterface == before.WrongInterface || after.Queries != before.Queries {
			t.Errorf("%s: %d refused for their interface, %d queries handled; want some refused and none handled", what,
				after.WrongInterface-before.WrongInterface, after.Queries-before.Queries)
		}
	}

	// Only loopback until the gateway's interface is named.
	unanswered("a query from the container before its interface is served", cliNS, "web.prod.local", "A")
	if err := s.SetInterfaces(Interfaces{Names: []string{gw}}); err != nil {
		t.Fatal(err)
	}
	if r := digFromClient("web.prod.local", "A"); !slices.Equal(rdata(r.answer, "A"), []string{"10.231.7.10"}) || !r.has("aa") {
		t.Fatalf("zone query from the client namespace:\n%s", r.out)
	}
	if r := digFromClient("+tcp", "web.prod.local", "A"); !slices.Equal(rdata(r.answer, "A"), []string{"10.231.7.10"}) {
		t.Fatalf("zone query over TCP from the client namespace:\n%s", r.out)
	}
	if r := digFromClient("prod.local", "NS"); !slices.Equal(rdata(r.additional, "A"), []string{"10.231.7.1"}) {
		t.Fatalf("want glue 10.231.7.1 (the gateway, not loopback):\n%s", r.out)
	}
	if r := digFromClient("example.org", "A"); r.status != "REFUSED" || r.has("ra") {
		t.Fatalf("recursion for a non-loopback client:\n%s", r.out)
	}
	if up1.queries.Load() != 0 {
		t.Fatal("a refused query reached the upstream")
	}

	unanswered("a query from the underlay", outNS, "web.prod.local", "A")
	unanswered("a query from the underlay with a source in the container subnet", outNS, "-b", "10.231.7.99", "web.prod.local", "A")
	// A prefix admits the underlay interface too: the check is by name.
	if err := s.SetInterfaces(Interfaces{Names: []string{gw}, Prefixes: []string{up[:len(up)-1]}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := digFrom(outNS, "web.prod.local", "A"); !ok {
		t.Fatal("the underlay is not answered although a prefix admits its interface")
	}
}
