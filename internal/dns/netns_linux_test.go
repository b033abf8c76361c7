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
// loopback only) and the NS glue is the gateway address.
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
	srvNS, cliNS := "zltd-s-"+suffix, "zltd-c-"+suffix
	for _, ns := range []string{srvNS, cliNS} {
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

	up := newStub(t, answerWith("192.0.2.70", 60))
	s := newTestServer(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	mustRegister(t, s, "web", "10.231.7.10")
	gateway := netip.MustParseAddrPort("10.231.7.1:53")
	inNetns(t, srvNS, func() error {
		return s.SetListeners([]netip.AddrPort{gateway, netip.MustParseAddrPort("127.0.0.1:0")})
	})
	if ls := s.Listeners(); len(ls) != 2 || ls[0] != gateway {
		t.Fatalf("Listeners() = %v", ls)
	}

	digFromClient := func(args ...string) digResult {
		t.Helper()
		cmd := append([]string{"netns", "exec", cliNS, digBinary(t), "@10.231.7.1", "-p", strconv.Itoa(int(gateway.Port())), "+tries=1", "+timeout=5"}, args...)
		out, err := exec.Command("ip", cmd...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v from the client namespace: %v\n%s", args, err, out)
		}
		return parseDig(t, string(out))
	}
	if r := digFromClient("web.prod.local", "A"); !slices.Equal(rdata(r.answer, "A"), []string{"10.231.7.10"}) || !r.has("aa") {
		t.Fatalf("zone query from the client namespace:\n%s", r.out)
	}
	if r := digFromClient("prod.local", "NS"); !slices.Equal(rdata(r.additional, "A"), []string{"10.231.7.1"}) {
		t.Fatalf("want glue 10.231.7.1 (the gateway, not loopback):\n%s", r.out)
	}
	if r := digFromClient("example.org", "A"); r.status != "REFUSED" || r.has("ra") {
		t.Fatalf("recursion for a non-loopback client:\n%s", r.out)
	}
	if up.queries.Load() != 0 {
		t.Fatal("a refused query reached the upstream")
	}
}
