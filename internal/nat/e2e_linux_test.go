package nat

// Privileged end-to-end tests: a node behind a real Linux NAT router, a
// real wireguard-go device on a nat.Bind, STUN servers and a WireGuard peer
// on the "internet"; ping, iptables and conntrack as independent observers.

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDiscoverThroughMasqueradeWhileTheTunnelCarriesTraffic(t *testing.T) {
	requireRoot(t, "ping")
	l := newNATLab(t)
	s1, s2 := stunAddr1+":3478", stunAddr2+":3478"
	startSTUNServers(t, l.net, s1, s2)
	peer := startWGHost(t, l.net, "zltn"+l.id+"p", 51820, "10.99.0.2/24")
	node := startWGHost(t, l.node, "zltn"+l.id+"d", 51830, "10.99.0.1/24")
	peer.addPeer(node, "", "10.99.0.1/32")
	node.addPeer(peer, peerAddr+":51820", "10.99.0.2/32")

	// MASQUERADE keeps the source port when it is free, so the WireGuard
	// socket's public face is the router's address and port 51830. Any
	// other socket would show its own (ephemeral) port.
	want := routerWAN + ":51830"
	if got := node.discover(1, 0, s1); got[0] != want {
		t.Fatalf("Discover before any WireGuard traffic = %s, want %s", got[0], want)
	}

	if n, out := pingAll(t, l.node, "10.99.0.2", 3, "0.2"); n == 0 {
		t.Fatalf("no tunnel through the NAT:\n%s", out)
	}
	if ep := peer.endpointOf(node); ep != want {
		t.Errorf("the WireGuard peer sees the node at %s, STUN said %s", ep, want)
	}

	// STUN and tunnel traffic in both directions at the same time, on the
	// same socket: every STUN answer must reach Discover and every
	// WireGuard packet the device.
	const discovers, pings = 100, 200
	results := node.send(nodeRequest{Op: "discover", Servers: []string{s1, s2}, Count: discovers, Interval: 20 * time.Millisecond})
	inbound := make(chan int, 1)
	go func() {
		n, out := pingAll(t, l.net, "10.99.0.1", pings, "0.01")
		if n != pings {
			t.Logf("inbound ping:\n%s", out)
		}
		inbound <- n
	}()
	outbound, out := pingAll(t, l.node, "10.99.0.2", pings, "0.01")
	if outbound != pings {
		t.Errorf("%d of %d pings node→peer came back during STUN traffic:\n%s", outbound, pings, out)
	}
	if n := <-inbound; n != pings {
		t.Errorf("%d of %d pings peer→node came back during STUN traffic", n, pings)
	}
	r := <-results
	if r.Err != "" || len(r.Results) != discovers {
		t.Fatalf("concurrent Discover: %d results, %s", len(r.Results), r.Err)
	}
	for i, got := range r.Results {
		if got != want {
			t.Errorf("Discover %d during tunnel traffic = %s, want %s", i, got, want)
		}
	}

	pr, err := node.probe(s1, s2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Probe behind MASQUERADE: %+v", *pr)
	if pr.Behaviour != BehaviourEndpointIndependent || pr.LocalPort != 51830 || len(pr.Errors) != 0 ||
		len(pr.Reflexive) != 1 || pr.Reflexive[0].String() != want {
		t.Errorf("Probe behind MASQUERADE = %+v, want endpoint-independent at %s", pr, want)
	}
	// The router's own record of the mappings agrees.
	if m := conntrackMappings(t, l.router); m != nil {
		for _, s := range []string{stunAddr1, stunAddr2, peerAddr} {
			if m[s] != 51830 {
				t.Errorf("conntrack on the router maps the node's port 51830 towards %s to %d", s, m[s])
			}
		}
	}

	pp, err := peer.probe(s1, s2)
	if err != nil || pp.Behaviour != BehaviourNone {
		t.Errorf("Probe on the internet side (no NAT) = %+v, %v; want none", pp, err)
	}

	// Other STUN implementations, as independent servers.
	t.Run("coturn", func(t *testing.T) {
		if _, err := exec.LookPath("turnserver"); err != nil {
			t.Skip("coturn's turnserver is not installed")
		}
		// Keep its pid file and user database out of the system's paths.
		dir := t.TempDir()
		startDaemon(t, l.net, "turnserver", "-n", "-S", "-z", "--no-cli", "--no-tls", "--no-dtls",
			"-L", stunAddr3, "-p", "3478", "--log-file", "stdout", "--simple-log",
			"--pidfile", dir+"/turnserver.pid", "--userdb", dir+"/turndb")
		waitUDPListener(t, l.net, stunAddr3, 3478)
		if got := node.discover(1, 0, stunAddr3+":3478"); got[0] != want {
			t.Errorf("Discover via coturn = %s, want %s", got[0], want)
		}
	})
	t.Run("stund", func(t *testing.T) {
		if _, err := exec.LookPath("stund"); err != nil {
			t.Skip("stund (stun-server) is not installed")
		}
		// An RFC 3489 server: it needs two addresses, and answers with
		// MAPPED-ADDRESS as well as XOR-MAPPED-ADDRESS.
		startDaemon(t, l.net, "stund", "-h", stunAddr3, "-a", extraAddr, "-p", "3480", "-o", "3481")
		waitUDPListener(t, l.net, stunAddr3, 3480)
		if got := node.discover(1, 0, stunAddr3+":3480"); got[0] != want {
			t.Errorf("Discover via stund = %s, want %s", got[0], want)
		}
	})

	node.must(nodeRequest{Op: "close"})
	if got := node.discover(1, 0, s1); !strings.Contains(got[0], "not open") {
		t.Errorf("Discover with the device closed = %s, want a not-open error", got[0])
	}
}

func TestProbeSeesARandomisingNATAsEndpointDependent(t *testing.T) {
	requireRoot(t)
	l := newNATLab(t, "--random")
	servers := []string{stunAddr1 + ":3478", stunAddr2 + ":3478", stunAddr3 + ":3478"}
	startSTUNServers(t, l.net, servers...)
	node := startWGHost(t, l.node, "zltn"+l.id+"d", 51830, "10.99.0.1/24")

	pr, err := node.probe(servers...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Probe behind MASQUERADE --random: %+v", *pr)
	// Three independent random ports coincide once in ~10⁹ runs.
	if pr.Behaviour != BehaviourEndpointDependent || pr.LocalPort != 51830 || len(pr.Errors) != 0 {
		t.Fatalf("Probe behind MASQUERADE --random = %+v, want endpoint-dependent", pr)
	}
	var ports []int
	for _, r := range pr.Reflexive {
		if r.Addr().String() != routerWAN {
			t.Errorf("reflexive address %s is not the router's %s", r, routerWAN)
		}
		ports = append(ports, int(r.Port()))
	}
	if m := conntrackMappings(t, l.router); m != nil {
		for _, s := range []string{stunAddr1, stunAddr2, stunAddr3} {
			if !slices.Contains(ports, m[s]) {
				t.Errorf("conntrack maps the node's port towards %s to %d, which Probe did not report (%v)", s, m[s], ports)
			}
		}
	}
}

// send starts a request and returns its response later; failures become
// the response's Err, so the caller may wait for it on the test goroutine.
func (h *host) send(req nodeRequest) <-chan nodeResponse {
	ch := make(chan nodeResponse, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				ch <- nodeResponse{Err: "host call failed"}
			}
		}()
		ch <- h.call(req)
	}()
	return ch
}

// startDaemon runs a server program in ns until the test ends; its output
// goes to the test log if the test fails.
func startDaemon(t testing.TB, ns string, args ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", args[0], out.String())
		}
	})
}

// waitUDPListener returns once a UDP socket in ns is bound to addr (IPv4)
// and port, or to the wildcard address and port. A server started just
// before may not be yet, and Discover gives up after its few retries: in
// the emulated guest coturn can take longer to start than that.
func waitUDPListener(t testing.TB, ns, addr string, port int) {
	t.Helper()
	// /proc/net/udp writes an IPv4 address as its 32 bits in host order
	// (little-endian here) in hex.
	a := netip.MustParseAddr(addr).As4()
	wants := []string{
		fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], port),
		fmt.Sprintf("00000000:%04X", port),
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The table of the namespace that cat runs in.
		out, _ := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/udp").Output()
		for _, line := range strings.Split(string(out), "\n") {
			// sl local_address ...
			if f := strings.Fields(line); len(f) > 1 && slices.Contains(wants, f[1]) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing in %s listens on UDP %s:%d after 30 s", ns, addr, port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// conntrackMappings reads the router's connection tracking table: for each
// UDP flow from the node's port 51830, the original destination and the
// public port the NAT gave it. nil when conntrack(8) is not installed.
func conntrackMappings(t testing.TB, ns string) map[string]int {
	t.Helper()
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Log("conntrack is not installed; skipping the router-side check")
		return nil
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L", "-p", "udp", "--orig-port-src", "51830").CombinedOutput()
	if err != nil {
		t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	m := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		var dst string
		var dport int
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			switch {
			case k == "dst" && dst == "":
				dst = v // the first dst is the original direction's
			case k == "dport":
				dport, _ = strconv.Atoi(v) // the last dport is the reply's
			}
		}
		if dst != "" {
			m[dst] = dport
		}
	}
	return m
}
