//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

const (
	turnUser = "overlay"
	turnPass = "e2e-turn-pass-93b1"
)

// turnLab is issue 17's topology: an "internet" (the lab's underlay) with
// coturn on it, two routers that masquerade with fully random ports
// (endpoint-dependent, "symmetric" NAT) and drop unsolicited inbound
// packets, and a node behind each. Node a takes its TURN server from the
// daemon's flags, node b from setup_global_overlay's turn_servers.
type turnLab struct {
	l        *lab.Lab
	turn     *lab.Host
	turnAddr string
	coturn   *exec.Cmd
	dir      string
	r1, r2   *lab.Router
	a, b     *lab.Node
	events   *eventLog
}

func newTURNLab(t *testing.T) *turnLab {
	t.Helper()
	return newTURNLabWith(t, lab.RouterOptions{FullyRandom: true})
}

func newTURNLabWith(t *testing.T, routers lab.RouterOptions) *turnLab {
	t.Helper()
	if _, err := exec.LookPath("turnserver"); err != nil {
		t.Skip("needs coturn's turnserver (apt-get install coturn)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	const turnHost = 100
	turnAddr := fmt.Sprintf("172.31.0.%d:3478", turnHost)
	l := newLab(t, "--stun-server", turnAddr)
	tl := &turnLab{l: l, turnAddr: turnAddr, dir: t.TempDir()}
	os.Chmod(tl.dir, 0o777)
	tl.turn = l.AddHost("turn", turnHost)
	tl.startCoturn(t)

	pass := filepath.Join(l.Dir(), "turn-password")
	if err := os.WriteFile(pass, []byte(turnPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tl.r1 = l.AddRouterWith("r1", 11, netip.MustParsePrefix("192.168.1.0/24"), routers)
	tl.r2 = l.AddRouterWith("r2", 12, netip.MustParsePrefix("192.168.2.0/24"), routers)
	tl.a = l.AddNodeBehind(tl.r1, "a", "--turn-server", turnAddr, "--turn-username", turnUser, "--turn-password-file", pass)
	tl.b = l.AddNodeBehind(tl.r2, "b")
	tl.events = collectEvents(t, tl.a, tl.b)
	return tl
}

// startCoturn runs coturn with long-term credentials on the TURN host.
func (tl *turnLab) startCoturn(t *testing.T) {
	t.Helper()
	host := strings.Split(tl.turnAddr, ":")[0]
	tl.coturn = tl.turn.Start("turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls",
		"-L", host, "--relay-ip", host, "-p", "3478", "--min-port", "49152", "--max-port", "65535",
		"--lt-cred-mech", "--user", turnUser+":"+turnPass, "--realm", "zlayer.test", "--fingerprint",
		"--log-file", filepath.Join(tl.dir, "turn.log"), "--simple-log",
		"--pidfile", filepath.Join(tl.dir, "turnserver.pid"), "--userdb", filepath.Join(tl.dir, "turndb"))
}

func (tl *turnLab) killCoturn(t *testing.T) {
	t.Helper()
	tl.coturn.Process.Kill()
	tl.coturn.Wait()
}

// eventLog collects every event pushed to the nodes' clients.
type eventLog struct {
	mu  sync.Mutex
	got map[string][]protocol.Event
}

func collectEvents(t *testing.T, nodes ...*lab.Node) *eventLog {
	el := &eventLog{got: map[string][]protocol.Event{}}
	for _, n := range nodes {
		ch := n.Client().Events()
		go func() {
			for ev := range ch {
				el.mu.Lock()
				el.got[n.Name] = append(el.got[n.Name], ev)
				el.mu.Unlock()
			}
		}()
	}
	return el
}

func (el *eventLog) find(node string, from int, match func(protocol.NATEndpointChanged) bool) (int, bool) {
	el.mu.Lock()
	defer el.mu.Unlock()
	evs := el.got[node]
	for i := from; i < len(evs); i++ {
		if e, ok := evs[i].(protocol.NATEndpointChanged); ok && match(e) {
			return i, true
		}
	}
	return len(evs), false
}

func (el *eventLog) count(node string) int {
	el.mu.Lock()
	defer el.mu.Unlock()
	return len(el.got[node])
}

// relayOf waits for a node's status to report a relayed address on the
// TURN host, other than not.
func (tl *turnLab) relayOf(t *testing.T, n *lab.Node, within time.Duration, not string) string {
	t.Helper()
	host := strings.Split(tl.turnAddr, ":")[0]
	var relay string
	lab.Eventually(t, within, n.Name+" relayed address", func() error {
		st := n.Status()
		if st.NAT == nil || len(st.NAT.RelayAddrs) == 0 {
			return fmt.Errorf("no relay_endpoints yet: %+v", st.NAT)
		}
		relay = st.NAT.RelayAddrs[0]
		if relay == not {
			return fmt.Errorf("still the old relayed address %s", relay)
		}
		if !strings.HasPrefix(relay, host+":") {
			return fmt.Errorf("relayed address %s is not on the TURN server %s", relay, host)
		}
		return nil
	})
	return relay
}

// peerSpec is what the test, playing the main daemon, tells node i about
// node j: its reflexive address (when STUN found one) as the endpoint and
// its relayed address as a candidate.
func peerSpec(st protocol.StatusSnapshot, j int, relay string) protocol.AddPeer {
	return peerSpecKA(st, j, relay, 25)
}

func peerSpecKA(st protocol.StatusSnapshot, j int, relay string, keepalive uint64) protocol.AddPeer {
	endpoint := relay
	if st.NAT != nil && len(st.NAT.ReflexiveAddrs) > 0 {
		endpoint = st.NAT.ReflexiveAddrs[0]
	}
	return protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: st.PublicKey, Endpoint: endpoint, AllowedIPs: sliceOf(j), PersistentKeepaliveSecs: keepalive},
		Candidates: []string{relay, endpoint}}
}

var pingReceived = regexp.MustCompile(`(\d+) received`)

// TestTURNRelayBetweenSymmetricNATs is issue 17's acceptance: both nodes
// allocate on coturn within 20 s of setup_global_overlay; given each
// other's relayed and reflexive addresses, node a reaches node b within
// 30 s through the relay, 20 pings at 10/s all arrive and status says
// relay; after coturn is killed and started again, both allocate again by
// themselves, report the new relayed addresses, and traffic resumes within
// 60 s of the new candidates.
func TestTURNRelayBetweenSymmetricNATs(t *testing.T) {
	tl := newTURNLab(t)
	a, b := tl.a, tl.b
	setup := func(i int) protocol.SetupGlobalOverlay {
		return protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: cluster, SliceCIDR: sliceOf(i), WGPort: 51820, NATEnabled: true}
	}
	start := time.Now()
	a.Call(setup(0))
	sb := setup(1)
	sb.TURNServers = []protocol.TURNServerConfig{{Address: tl.turnAddr, Username: turnUser, Credential: turnPass}}
	b.Call(sb)

	// 1. Relayed addresses within 20 s.
	relayA := tl.relayOf(t, a, 20*time.Second-time.Since(start), "")
	relayB := tl.relayOf(t, b, 20*time.Second-time.Since(start), "")
	t.Logf("relayed: a %s, b %s (after %v)", relayA, relayB, time.Since(start).Round(time.Millisecond))
	stA, stB := a.Status(), b.Status()
	for _, st := range []protocol.StatusSnapshot{stA, stB} {
		if ts := st.NAT.TURNServers; len(ts) != 1 || ts[0].Address != tl.turnAddr || ts[0].State != "allocated" {
			t.Fatalf("turn_servers in status: %+v", ts)
		}
		if out, _ := jsonOf(st); strings.Contains(out, turnPass) {
			t.Fatal("status carries the TURN password")
		}
	}
	// The routers are symmetric: whatever STUN saw is of no use to a
	// peer, so only the relay can connect the nodes.
	t.Logf("reflexive: a %v (%s), b %v (%s)", stA.NAT.ReflexiveAddrs, stA.NAT.Behaviour, stB.NAT.ReflexiveAddrs, stB.NAT.Behaviour)
	lab.Eventually(t, 5*time.Second, "b's own relay event", func() error {
		if _, ok := tl.events.find("b", 0, func(e protocol.NATEndpointChanged) bool {
			return e.Pubkey == stB.PublicKey && e.Endpoint == relayB && e.Candidate == "relay"
		}); !ok {
			return fmt.Errorf("no nat_endpoint_changed for b's own relayed address %s", relayB)
		}
		return nil
	})

	// 2. The main daemon passes each node's addresses to the other.
	added := time.Now()
	a.Call(peerSpec(stB, 1, relayB))
	b.Call(peerSpec(stA, 0, relayA))
	lab.Eventually(t, 30*time.Second, "a reaches b's overlay address", func() error { return a.Ping(stB.NodeIP, 1) })
	t.Logf("a reached b %v after add_peer", time.Since(added).Round(time.Millisecond))
	pings(t, a, stB.NodeIP, 20)
	for _, n := range []*lab.Node{a, b} {
		p := n.Status().Peers
		if len(p) != 1 || p[0].Path != protocol.PathRelay || p[0].Relay == "" {
			out, _ := n.Exec("wg", "show", "zl-prod-g")
			t.Fatalf("%s's peer: %+v, want path relay\n%s", n.Name, p, out)
		}
		t.Logf("%s reaches its peer at %s via %s", n.Name, p[0].Endpoint, p[0].Relay)
	}
	if _, ok := tl.events.find("a", 0, func(e protocol.NATEndpointChanged) bool {
		return e.Pubkey == stB.PublicKey && e.Path == protocol.PathRelay
	}); !ok {
		t.Fatal("no nat_endpoint_changed with path relay for a's peer")
	}

	// 3. coturn restarts: every allocation is lost.
	fromA, fromB := tl.events.count("a"), tl.events.count("b")
	tl.killCoturn(t)
	killed := time.Now()
	// While it is down, status and log say so (and nothing hammers it).
	lab.Eventually(t, 45*time.Second, "a reports the dead TURN server", func() error {
		ts := a.Status().NAT.TURNServers
		if len(ts) != 1 || ts[0].State != "failed" || ts[0].LastError == "" {
			return fmt.Errorf("turn_servers %+v", ts)
		}
		return nil
	})
	t.Logf("a reported the dead server %v after the kill: %+v", time.Since(killed).Round(time.Millisecond), a.Status().NAT.TURNServers)
	tl.startCoturn(t)
	restarted := time.Now()
	newA, newB := "", ""
	lab.Eventually(t, 60*time.Second, "both nodes allocate again", func() error {
		for _, x := range []struct {
			n    string
			from int
			key  string
			out  *string
		}{{"a", fromA, stA.PublicKey, &newA}, {"b", fromB, stB.PublicKey, &newB}} {
			i, ok := tl.events.find(x.n, x.from, func(e protocol.NATEndpointChanged) bool { return e.Pubkey == x.key && e.Candidate == "relay" })
			if !ok {
				return fmt.Errorf("no new relay event from %s", x.n)
			}
			tl.events.mu.Lock()
			*x.out = tl.events.got[x.n][i].(protocol.NATEndpointChanged).Endpoint
			tl.events.mu.Unlock()
		}
		return nil
	})
	t.Logf("new relayed: a %s, b %s (%v after the restart)", newA, newB, time.Since(restarted).Round(time.Millisecond))
	if got := tl.relayOf(t, a, 5*time.Second, ""); got != newA {
		t.Fatalf("a's status says %s, its event %s", got, newA)
	}
	stA, stB = a.Status(), b.Status()
	passed := time.Now()
	a.Call(peerSpec(stB, 1, newB))
	b.Call(peerSpec(stA, 0, newA))
	lab.Eventually(t, 60*time.Second, "traffic resumes over the new allocations", func() error { return a.Ping(stB.NodeIP, 1) })
	t.Logf("traffic resumed %v after the new candidates", time.Since(passed).Round(time.Millisecond))
	pings(t, a, stB.NodeIP, 20)
	if p := a.Status().Peers; len(p) != 1 || p[0].Path != protocol.PathRelay {
		t.Fatalf("a's peer after the restart: %+v", p)
	}
	b.Ping(stA.NodeIP, 3)

	for _, n := range []*lab.Node{a, b} {
		if log, err := os.ReadFile(n.LogPath()); err == nil && strings.Contains(string(log), turnPass) {
			t.Fatalf("%s's log contains the TURN password", n.Name)
		}
	}
}

// TestTURNRelayGivesWayToADirectPath: behind port-preserving routers a
// direct path is possible, but r2 first drops everything between the two
// routers, so the nodes meet through the relay. Once the block is lifted,
// the copies of keepalives each side sends to the other's direct address
// punch through, and both move off the relay by themselves, without the
// main daemon doing anything.
func TestTURNRelayGivesWayToADirectPath(t *testing.T) {
	tl := newTURNLabWith(t, lab.RouterOptions{})
	a, b := tl.a, tl.b
	r2nft := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", tl.r2.NS, "nft"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
	}
	r2nft("add", "chain", "ip", "labnat", "block", "{", "type", "filter", "hook", "forward", "priority", "0", ";", "}")
	r2nft("add", "rule", "ip", "labnat", "block", "ip", "saddr", tl.r1.Public.String(), "drop")
	r2nft("add", "rule", "ip", "labnat", "block", "ip", "daddr", tl.r1.Public.String(), "drop")

	for i, n := range []*lab.Node{a, b} {
		req := protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: cluster, SliceCIDR: sliceOf(i), WGPort: 51820, NATEnabled: true}
		if n == b {
			req.TURNServers = []protocol.TURNServerConfig{{Address: tl.turnAddr, Username: turnUser, Credential: turnPass}}
		}
		n.Call(req)
	}
	relayA, relayB := tl.relayOf(t, a, 20*time.Second, ""), tl.relayOf(t, b, 20*time.Second, "")
	// STUN and TURN run side by side: the reflexive address may come
	// after the relayed one (on the VM lab's emulated CPU it did).
	var stA, stB protocol.StatusSnapshot
	lab.Eventually(t, 20*time.Second, "reflexive addresses", func() error {
		stA, stB = a.Status(), b.Status()
		if len(stA.NAT.ReflexiveAddrs) == 0 || len(stB.NAT.ReflexiveAddrs) == 0 {
			return errf("reflexive: a %v, b %v", stA.NAT.ReflexiveAddrs, stB.NAT.ReflexiveAddrs)
		}
		return nil
	})
	for _, st := range []protocol.StatusSnapshot{stA, stB} {
		if len(st.NAT.ReflexiveAddrs) == 0 || !strings.HasSuffix(st.NAT.ReflexiveAddrs[0], ":51820") {
			t.Fatalf("a port-preserving router should give a reflexive :51820, got %v", st.NAT.ReflexiveAddrs)
		}
	}
	a.Call(peerSpecKA(stB, 1, relayB, 10))
	b.Call(peerSpecKA(stA, 0, relayA, 10))
	lab.Eventually(t, 30*time.Second, "a reaches b through the relay", func() error { return a.Ping(stB.NodeIP, 1) })
	if p := a.Status().Peers[0]; p.Path != protocol.PathRelay {
		t.Fatalf("with the routers blocked, a's peer is not on the relay: %+v", p)
	}
	// The main daemon hears of the relay path from the health monitor's
	// next pass with the peer healthy. Only once it has can the move back
	// be an event: a path that changes before the monitor saw the relay
	// was never reported as anything but direct. (On the VM lab's
	// emulated CPU the relay phase can end before that pass.)
	var from int
	lab.Eventually(t, 20*time.Second, "the relay path reported", func() error {
		i, ok := tl.events.find("a", 0, func(e protocol.NATEndpointChanged) bool {
			return e.Pubkey == stB.PublicKey && e.Path == protocol.PathRelay
		})
		if !ok {
			return errf("no nat_endpoint_changed with path relay for a's peer")
		}
		from = i + 1
		return nil
	})

	r2nft("flush", "chain", "ip", "labnat", "block")
	lifted := time.Now()
	lab.Eventually(t, 60*time.Second, "both nodes move to the direct path", func() error {
		a.Ping(stB.NodeIP, 1) // traffic keeps both sessions busy meanwhile
		for _, x := range []struct {
			n    *lab.Node
			want string
		}{{a, stB.NAT.ReflexiveAddrs[0]}, {b, stA.NAT.ReflexiveAddrs[0]}} {
			p := x.n.Status().Peers
			if len(p) != 1 || p[0].Path != protocol.PathDirect || p[0].Endpoint != x.want {
				return fmt.Errorf("%s's peer: %+v (want direct at %s)", x.n.Name, p, x.want)
			}
		}
		return nil
	})
	t.Logf("direct %v after the block was lifted", time.Since(lifted).Round(time.Millisecond))
	lab.Eventually(t, 20*time.Second, "the event", func() error {
		if _, ok := tl.events.find("a", from, func(e protocol.NATEndpointChanged) bool {
			return e.Pubkey == stB.PublicKey && e.Path == protocol.PathDirect
		}); !ok {
			return errf("no nat_endpoint_changed with path direct for a's peer")
		}
		return nil
	})
	pings(t, a, stB.NodeIP, 20)
}

func jsonOf(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// pings sends count pings at 10/s and wants every one back.
func pings(t *testing.T, n *lab.Node, to netip.Addr, count int) {
	t.Helper()
	out, err := n.Exec("ping", "-n", "-c", fmt.Sprint(count), "-i", "0.1", "-W", "2", to.String())
	m := pingReceived.FindStringSubmatch(out)
	if m == nil || m[1] != fmt.Sprint(count) {
		t.Fatalf("%d pings at 10/s from %s to %s: %v\n%s", count, n.Name, to, err, out)
	}
}

// TestTURNThroughput measures TCP throughput over the overlay between the
// two nodes of the TURN lab, first through coturn (the routers are
// symmetric), then directly (the routers switched to port-preserving
// masquerade, so the nodes punch through), with the same daemons and
// iperf3 settings. It is a measurement, not a check: it runs only with
// ZL_BENCH_TURN=1 and reports its numbers for docs/benchmarks.md.
func TestTURNThroughput(t *testing.T) {
	if os.Getenv("ZL_BENCH_TURN") == "" {
		t.Skip("a measurement: set ZL_BENCH_TURN=1 (see docs/benchmarks.md)")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3")
	}
	tl := newTURNLab(t)
	a, b := tl.a, tl.b
	for i, n := range []*lab.Node{a, b} {
		req := protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: cluster, SliceCIDR: sliceOf(i), WGPort: 51820, NATEnabled: true}
		if n == b {
			req.TURNServers = []protocol.TURNServerConfig{{Address: tl.turnAddr, Username: turnUser, Credential: turnPass}}
		}
		n.Call(req)
	}
	relayA, relayB := tl.relayOf(t, a, 20*time.Second, ""), tl.relayOf(t, b, 20*time.Second, "")
	stA, stB := a.Status(), b.Status()
	a.Call(peerSpec(stB, 1, relayB))
	b.Call(peerSpec(stA, 0, relayA))
	lab.Eventually(t, 30*time.Second, "relay path", func() error { return a.Ping(stB.NodeIP, 1) })
	if p := a.Status().Peers[0]; p.Path != protocol.PathRelay {
		t.Fatalf("not on the relay: %+v", p)
	}
	relayed := iperf(t, a, b, stB.NodeIP)

	// Direct: port-preserving routers; STUN finds the new mappings and
	// the main daemon passes them on as the endpoints.
	for _, r := range []*lab.Router{tl.r1, tl.r2} {
		out, err := exec.Command("ip", "netns", "exec", r.NS, "sh", "-c",
			"nft flush chain ip labnat post && nft add rule ip labnat post oifname wan ip saddr "+r.LAN.String()+" masquerade && conntrack -F").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", r.Name, err, out)
		}
	}
	for _, n := range []*lab.Node{a, b} {
		n.Call(protocol.NATTick{})
	}
	stA, stB = a.Status(), b.Status()
	direct := func(st protocol.StatusSnapshot, j int) protocol.AddPeer {
		return protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: st.PublicKey, Endpoint: st.NAT.ReflexiveAddrs[0], AllowedIPs: sliceOf(j), PersistentKeepaliveSecs: 25}}
	}
	a.Call(direct(stB, 1))
	b.Call(direct(stA, 0))
	lab.Eventually(t, 60*time.Second, "direct path", func() error {
		if err := a.Ping(stB.NodeIP, 1); err != nil {
			return err
		}
		if p := a.Status().Peers[0]; p.Path != protocol.PathDirect {
			return fmt.Errorf("path %s via %s", p.Path, p.Endpoint)
		}
		return nil
	})
	straight := iperf(t, a, b, stB.NodeIP)
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("iperf3 -c %s -t 10 -P 1 (TCP, MTU 1420 overlay): relay %.0f Mbit/s, direct %.0f Mbit/s, ratio %.2f; loadavg %s",
		stB.NodeIP, relayed/1e6, straight/1e6, relayed/straight, strings.TrimSpace(string(load)))
}

// iperf runs a 10-second single-stream TCP test from a to b's overlay
// address and returns the receiver's bits per second.
func iperf(t *testing.T, a, b *lab.Node, to netip.Addr) float64 {
	t.Helper()
	srv := exec.Command("ip", "netns", "exec", b.NS, "iperf3", "-s", "-1", "-B", to.String())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var out string
	lab.Eventually(t, 10*time.Second, "iperf3", func() error {
		var err error
		out, err = a.Exec("iperf3", "-c", to.String(), "-t", "10", "-P", "1", "-J")
		return err
	})
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.End.SumReceived.BitsPerSecond == 0 {
		t.Fatalf("iperf3: %v\n%s", err, out)
	}
	return res.End.SumReceived.BitsPerSecond
}

// TestNATRefreshesByItself: with --nat-refresh-interval the reflexive
// address is refreshed without nat_tick, a new mapping (the router lost
// its conntrack state) is found and reported as a nat_endpoint_changed
// for the node's own key, and nat_tick still forces a refresh.
func TestNATRefreshesByItself(t *testing.T) {
	if _, err := exec.LookPath("turnserver"); err != nil {
		t.Skip("needs coturn's turnserver (apt-get install coturn)")
	}
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Skip("needs conntrack")
	}
	l := newLab(t, "--stun-server", "172.31.0.100:3478", "--nat-refresh-interval", "1s")
	stun := l.AddHost("stun", 100)
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	stun.Start("turnserver", "-n", "-S", "-z", "--no-cli", "--no-tls", "--no-dtls", "-L", stun.Addr.String(), "-p", "3478",
		"--log-file", "stdout", "--simple-log", "--pidfile", dir+"/turnserver.pid", "--userdb", dir+"/turndb")
	r := l.AddRouterWith("r1", 11, netip.MustParsePrefix("192.168.1.0/24"), lab.RouterOptions{FullyRandom: true})
	a := l.AddNodeBehind(r, "a")
	events := collectEvents(t, a)
	a.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: cluster, SliceCIDR: sliceOf(0), WGPort: 51820, NATEnabled: true})
	var first protocol.StatusSnapshot
	lab.Eventually(t, 15*time.Second, "a reflexive address", func() error {
		first = a.Status()
		if first.NAT == nil || len(first.NAT.ReflexiveAddrs) == 0 || first.NAT.LastRefreshUnix == 0 {
			return errf("nat %+v", first.NAT)
		}
		return nil
	})
	if first.NAT.RefreshIntervalSecs != 1 {
		t.Fatalf("refresh_interval_secs %d, want 1", first.NAT.RefreshIntervalSecs)
	}
	// No nat_tick from here on: the refresh time moves by itself.
	lab.Eventually(t, 10*time.Second, "a refresh without nat_tick", func() error {
		if st := a.Status(); st.NAT.LastRefreshUnix <= first.NAT.LastRefreshUnix+1 {
			return errf("last refresh still %d (first %d)", st.NAT.LastRefreshUnix, first.NAT.LastRefreshUnix)
		}
		return nil
	})
	// The router forgets its mappings; with fully random ports the next
	// refresh finds a new one and says so.
	old := first.NAT.ReflexiveAddrs[0]
	lab.Eventually(t, 20*time.Second, "a new reflexive address", func() error {
		if out, err := exec.Command("ip", "netns", "exec", r.NS, "conntrack", "-D", "-p", "udp", "--orig-port-src", "51820").CombinedOutput(); err != nil && !strings.Contains(string(out), "0 flow entries") {
			return errf("conntrack: %v %s", err, out)
		}
		time.Sleep(1500 * time.Millisecond)
		st := a.Status()
		if len(st.NAT.ReflexiveAddrs) == 0 || st.NAT.ReflexiveAddrs[0] == old {
			return errf("reflexive still %v", st.NAT.ReflexiveAddrs)
		}
		return nil
	})
	now := a.Status().NAT.ReflexiveAddrs[0]
	lab.Eventually(t, 5*time.Second, "the event", func() error {
		if _, ok := events.find("a", 0, func(e protocol.NATEndpointChanged) bool {
			return e.Pubkey == first.PublicKey && e.Candidate == "reflexive" && e.Endpoint == now
		}); !ok {
			return errf("no nat_endpoint_changed for a's own new reflexive address %s", now)
		}
		return nil
	})
	// nat_tick still probes on demand: it answers ok only once a server
	// answered (an err otherwise, which Call reports).
	a.Call(protocol.NATTick{})
	if st := a.Status(); st.NAT.LastError != "" || st.NAT.ReflexiveAddrs[0] != now {
		t.Fatalf("after nat_tick: %+v", st.NAT)
	}
}
