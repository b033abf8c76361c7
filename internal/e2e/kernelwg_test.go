//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// The production path on every stock distribution kernel: `--wireguard
// auto` picks kernel WireGuard. These tests skip on a kernel without it
// (ours); `make test-vm` and CI run them in a QEMU guest booting Debian's
// stock kernels (internal/lab/vm). Every device is checked to be a kernel
// wireguard link by asking netlink (ip -d link), never by a log line.

const globalDev = "zl-prod-g"

// newKernelLab is newLab for nodes that must run kernel WireGuard.
func newKernelLab(t *testing.T) *lab.Lab {
	t.Helper()
	if err := lab.Check(); err != nil {
		t.Skip("end-to-end tests: " + err.Error())
	}
	requireKernelWireGuard(t)
	return newLab(t, "--wireguard", "auto")
}

// requireKernelWireGuard skips unless this kernel creates wireguard links.
func requireKernelWireGuard(t *testing.T) {
	t.Helper()
	name := "zlkwg" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	out, err := exec.Command("ip", "link", "add", name, "type", "wireguard").CombinedOutput()
	if err == nil {
		exec.Command("ip", "link", "del", name).Run()
		return
	}
	if strings.Contains(string(out), "Unknown device type") || strings.Contains(string(out), "not supported") {
		t.Skip("kernel has no WireGuard; make test-vm runs this in a VM")
	}
	t.Fatalf("cannot tell whether the kernel has WireGuard: ip link add type wireguard: %v\n%s", err, out)
}

// netlinkLink is what ip -d link (netlink) reports about a link.
type netlinkLink struct {
	Name     string `json:"ifname"`
	Index    int    `json:"ifindex"`
	Alias    string `json:"ifalias"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
	} `json:"linkinfo"`
}

func linksOf(t *testing.T, n *lab.Node, args ...string) []netlinkLink {
	t.Helper()
	var links []netlinkLink
	out := n.MustExec(append([]string{"ip", "-j", "-d", "link", "show"}, args...)...)
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		t.Fatalf("node %s: ip -j -d link show %v: %v\n%s", n.Name, args, err, out)
	}
	return links
}

// kernelLink fails t unless dev on n is a kernel wireguard link.
func kernelLink(t *testing.T, n *lab.Node, dev string) netlinkLink {
	t.Helper()
	links := linksOf(t, n, "dev", dev)
	if len(links) != 1 || links[0].LinkInfo.Kind != "wireguard" {
		t.Fatalf("node %s: %s is not a kernel wireguard link: %+v", n.Name, dev, links)
	}
	return links[0]
}

// wgDevice is `wg show DEV dump`: wg(8) reads a kernel device over generic
// netlink, independently of our daemon.
type wgDevice struct {
	PublicKey string
	Port      uint16
	Peers     map[string]wgPeer
}

type wgPeer struct {
	Endpoint   string
	AllowedIPs []string
	Handshake  int64
	Rx, Tx     uint64
	Keepalive  uint64
}

func wgDump(t *testing.T, n *lab.Node, dev string) wgDevice {
	t.Helper()
	out := strings.TrimSpace(n.MustExec("wg", "show", dev, "dump"))
	lines := strings.Split(out, "\n")
	f := strings.Split(lines[0], "\t")
	if len(f) != 4 {
		t.Fatalf("wg show %s dump: device line %q", dev, lines[0])
	}
	port, _ := strconv.ParseUint(f[2], 10, 16)
	d := wgDevice{PublicKey: f[1], Port: uint16(port), Peers: map[string]wgPeer{}}
	for _, line := range lines[1:] {
		f := strings.Split(line, "\t")
		if len(f) != 8 {
			t.Fatalf("wg show %s dump: peer line %q", dev, line)
		}
		p := wgPeer{Endpoint: f[2], AllowedIPs: strings.Split(f[3], ",")}
		p.Handshake, _ = strconv.ParseInt(f[4], 10, 64)
		p.Rx, _ = strconv.ParseUint(f[5], 10, 64)
		p.Tx, _ = strconv.ParseUint(f[6], 10, 64)
		p.Keepalive, _ = strconv.ParseUint(f[7], 10, 64) // "off" reads as 0
		slices.Sort(p.AllowedIPs)
		d.Peers[f[0]] = p
	}
	return d
}

// checkStatusAgreesWithWg compares our status with what wg(8) sees. The
// counters and handshake move while we look, so status is read between
// two dumps and must lie between them.
func checkStatusAgreesWithWg(t *testing.T, n *lab.Node) {
	t.Helper()
	before := wgDump(t, n, globalDev)
	s := n.Status()
	after := wgDump(t, n, globalDev)
	if s.WGBackend != "kernel" {
		t.Errorf("node %s: status wg_backend %q, want kernel", n.Name, s.WGBackend)
	}
	if s.PublicKey != after.PublicKey || s.WGPort != after.Port {
		t.Errorf("node %s: status key %s port %d, wg shows %s port %d", n.Name, s.PublicKey, s.WGPort, after.PublicKey, after.Port)
	}
	if len(s.Peers) != len(after.Peers) {
		t.Errorf("node %s: status has %d peers, wg shows %d", n.Name, len(s.Peers), len(after.Peers))
	}
	for _, p := range s.Peers {
		b, okb := before.Peers[p.PublicKey]
		a, oka := after.Peers[p.PublicKey]
		if !okb || !oka {
			t.Errorf("node %s: status peer %s (base64 key) is not on the device", n.Name, p.PublicKey)
			continue
		}
		allowed := strings.Split(p.AllowedIPs, ",")
		slices.Sort(allowed)
		switch {
		case p.Endpoint != a.Endpoint:
			t.Errorf("node %s peer %s: endpoint %s, wg shows %s", n.Name, p.PublicKey, p.Endpoint, a.Endpoint)
		case !slices.Equal(allowed, a.AllowedIPs):
			t.Errorf("node %s peer %s: allowed IPs %v, wg shows %v", n.Name, p.PublicKey, allowed, a.AllowedIPs)
		case p.LastHandshakeUnixSecs == 0 || p.LastHandshakeUnixSecs < b.Handshake || p.LastHandshakeUnixSecs > a.Handshake:
			t.Errorf("node %s peer %s: handshake %d (Unix seconds), wg shows %d then %d", n.Name, p.PublicKey, p.LastHandshakeUnixSecs, b.Handshake, a.Handshake)
		case p.RxBytes < b.Rx || p.RxBytes > a.Rx || p.TxBytes < b.Tx || p.TxBytes > a.Tx || p.RxBytes == 0 || p.TxBytes == 0:
			t.Errorf("node %s peer %s: rx/tx %d/%d, wg shows %d/%d then %d/%d", n.Name, p.PublicKey, p.RxBytes, p.TxBytes, b.Rx, b.Tx, a.Rx, a.Tx)
		case p.PersistentKeepaliveSecs != a.Keepalive:
			t.Errorf("node %s peer %s: keepalive %d, wg shows %d", n.Name, p.PublicKey, p.PersistentKeepaliveSecs, a.Keepalive)
		}
	}
}

// noWireGuardLinks fails t if n has any wireguard link left.
func noWireGuardLinks(t *testing.T, n *lab.Node) {
	t.Helper()
	if links := linksOf(t, n, "type", "wireguard"); len(links) != 0 {
		t.Errorf("node %s: wireguard links left after teardown: %+v", n.Name, links)
	}
}

// Two- and three-node meshes over kernel WireGuard: every node pings every
// other one, wg(8) and our status agree on keys, endpoints, allowed IPs,
// handshake times and counters, and teardown leaves no wireguard link.
func TestKernelWGMesh(t *testing.T) {
	for _, size := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d-nodes", size), func(t *testing.T) {
			l := newKernelLab(t)
			var nodes []*lab.Node
			for i := range size {
				nodes = append(nodes, l.AddNode(fmt.Sprintf("n%d", i)))
			}
			st := setupGlobal(t, nodes)
			meshPeers(t, nodes, st, nil)
			for i, n := range nodes {
				kernelLink(t, n, globalDev)
				for j := range nodes {
					if i != j {
						mustPing(t, n.Name, n.Ping, st[j].NodeIP)
					}
				}
			}
			for _, n := range nodes {
				checkStatusAgreesWithWg(t, n)
			}
			for _, n := range nodes {
				n.Call(protocol.TeardownGlobalOverlay{})
				noWireGuardLinks(t, n)
			}
		})
	}
}

// youngSession waits until the session of dev on n with peer is settled
// and younger than a minute, and returns its handshake time. WireGuard
// renews a session every two minutes of traffic; from a young session on,
// a window shorter than a minute cannot contain that renewal, so a
// handshake time that changes within it means the session was lost.
// Settled: at least 7 s old. When both sides initiate at once, or a
// response comes late (an emulated CPU is slow), one of them retries after
// REKEY_TIMEOUT (5 s) and the time moves once more, without any loss.
func youngSession(t *testing.T, n *lab.Node, dev, peer string, traffic func()) int64 {
	t.Helper()
	var hs int64
	lab.Eventually(t, 3*time.Minute, "a settled session younger than a minute", func() error {
		hs = wgDump(t, n, dev).Peers[peer].Handshake
		age := time.Since(time.Unix(hs, 0))
		if hs != 0 && age >= 7*time.Second && age < time.Minute {
			return nil
		}
		if hs == 0 || age >= time.Minute {
			traffic()
		}
		return fmt.Errorf("latest handshake %d", hs)
	})
	return hs
}

// An add_peer upsert (a new endpoint) keeps the kernel session; allowed-IP
// operations reach the kernel device and round-trip.
func TestKernelWGPeerUpsertAndAllowedIPs(t *testing.T) {
	l := newKernelLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	mustPing(t, "a", a.Ping, st[1].NodeIP)
	kernelLink(t, a, globalDev)

	alt := netip.MustParseAddr("172.31.0.201")
	b.MustExec("ip", "addr", "add", alt.String()+"/24", "dev", "eth0")
	before := youngSession(t, a, globalDev, st[1].PublicKey, func() { a.Ping(st[1].NodeIP, 1) })
	a.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
		PublicKey: st[1].PublicKey, Endpoint: netip.AddrPortFrom(alt, 51820).String(), AllowedIPs: sliceOf(1), PersistentKeepaliveSecs: 25,
	}})
	p := wgDump(t, a, globalDev).Peers[st[1].PublicKey]
	if p.Endpoint != netip.AddrPortFrom(alt, 51820).String() {
		t.Fatalf("upsert did not reach the kernel device: endpoint %s", p.Endpoint)
	}
	if p.Handshake != before {
		t.Fatalf("upsert reset the kernel session: handshake %d -> %d", before, p.Handshake)
	}
	mustPing(t, "a", a.Ping, st[1].NodeIP)

	extra := "10.200.99.0/24"
	a.Call(protocol.AddAllowedIP{Pubkey: st[1].PublicKey, CIDR: extra})
	if got := wgDump(t, a, globalDev).Peers[st[1].PublicKey].AllowedIPs; !slices.Contains(got, extra) {
		t.Fatalf("add_allowed_ip did not reach the kernel device: %v", got)
	}
	a.Call(protocol.RemoveAllowedIP{Pubkey: st[1].PublicKey, CIDR: extra})
	if got := wgDump(t, a, globalDev).Peers[st[1].PublicKey].AllowedIPs; slices.Contains(got, extra) || !slices.Contains(got, sliceOf(1)) {
		t.Fatalf("remove_allowed_ip did not round-trip on the kernel device: %v", got)
	}
	checkStatusAgreesWithWg(t, a)
}

// Dedicated service devices are kernel links of their own, carry traffic
// on their own port, and are gone after teardown.
func TestKernelWGDedicatedDevices(t *testing.T) {
	l := newKernelLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	setupGlobal(t, nodes)
	var ded [2]protocol.ServiceOverlay
	for i, n := range nodes {
		ded[i] = n.Call(protocol.SetupServiceOverlay{Service: "db", Mode: "dedicated"}).(protocol.ServiceOverlay)
		kernelLink(t, n, ded[i].Name)
	}
	peerDedicated(t, nodes, ded)
	d := wgDump(t, a, ded[0].Name)
	p, ok := d.Peers[ded[1].WGPublicKey]
	if d.Port != ded[0].WGPort || !ok || p.Handshake == 0 || p.Rx == 0 || p.Tx == 0 || !strings.HasSuffix(p.Endpoint, fmt.Sprintf(":%d", ded[1].WGPort)) {
		t.Fatalf("the dedicated kernel device did not carry the traffic on its own port: %+v", d)
	}
	if _, leaked := wgDump(t, a, globalDev).Peers[ded[1].WGPublicKey]; leaked {
		t.Fatal("the dedicated peer leaked into the global device")
	}
	for _, n := range nodes {
		n.Call(protocol.TeardownServiceOverlay{Service: "db"})
		n.Call(protocol.TeardownGlobalOverlay{})
		noWireGuardLinks(t, n)
	}
}

// Restarting a node's daemon does not interrupt kernel WireGuard: pings
// that run across a SIGKILL and start (60 at 5/s), and across a SIGTERM
// and start (40), all arrive; the device is adopted (same ifindex) and
// the session kept (same handshake time).
func TestKernelWGRestartKeepsTrafficAndSession(t *testing.T) {
	l := newKernelLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	mustPing(t, "b", b.Ping, st[0].NodeIP)

	for _, c := range []struct {
		how   string
		count int
		stop  func()
	}{
		{"SIGKILL", 60, a.Kill},
		{"SIGTERM", 40, func() {
			if code := a.Stop(); code != 0 {
				t.Errorf("SIGTERM: daemon exited %d", code)
			}
		}},
	} {
		t.Run(c.how, func(t *testing.T) {
			link := kernelLink(t, a, globalDev)
			hs := youngSession(t, a, globalDev, st[1].PublicKey, func() { b.Ping(st[0].NodeIP, 1) })
			p := startPings(t, b, st[0].NodeIP, c.count)
			c.stop()
			a.Start()
			t.Logf("%s and start done after %d of %d pings", c.how, p.replies(), c.count)
			if err := p.wait(); err != nil {
				t.Fatalf("pings across the %s and start: %v", c.how, err)
			}
			if after := kernelLink(t, a, globalDev); after.Index != link.Index {
				t.Fatalf("the device was recreated (ifindex %d -> %d), not adopted", link.Index, after.Index)
			}
			if after := wgDump(t, a, globalDev).Peers[st[1].PublicKey].Handshake; after != hs {
				t.Fatalf("the session was not kept: handshake %d -> %d", hs, after)
			}
			checkStatusAgreesWithWg(t, a)
		})
	}
}

// pinger is a ping run in the background.
type pinger struct {
	cmd   *exec.Cmd
	count int
	seen  chan int // replies so far, sent on each reply
	last  int
	out   strings.Builder
	done  chan error
}

var replyLine = regexp.MustCompile(`bytes from .* icmp_seq=`)

// startPings sends count pings at 5/s from n to addr and returns once the
// first reply arrived, so whatever the test does next happens while
// traffic flows.
func startPings(t *testing.T, n *lab.Node, addr netip.Addr, count int) *pinger {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	p := &pinger{count: count, seen: make(chan int, count+1), done: make(chan error, 1)}
	p.cmd = exec.CommandContext(ctx, "ip", "netns", "exec", n.NS, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", addr.String())
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		replies := 0
		for sc.Scan() {
			p.out.WriteString(sc.Text() + "\n")
			if replyLine.MatchString(sc.Text()) {
				replies++
				p.seen <- replies
			}
		}
		p.done <- p.cmd.Wait()
	}()
	select {
	case p.last = <-p.seen:
	case err := <-p.done:
		t.Fatalf("ping ended before its first reply: %v\n%s", err, p.out.String())
	}
	return p
}

// replies is how many replies have arrived so far.
func (p *pinger) replies() int {
	for {
		select {
		case n := <-p.seen:
			p.last = n
		default:
			return p.last
		}
	}
}

// wait returns nil when every ping was answered.
func (p *pinger) wait() error {
	err := <-p.done
	out := p.out.String()
	want := fmt.Sprintf("%d packets transmitted, %d received", p.count, p.count)
	if err != nil || !strings.Contains(out, want) {
		return fmt.Errorf("want %q (exit %v):\n%s", want, err, out)
	}
	return nil
}

// Our nftables table is installed on the kernel: masquerade, forward
// accounting and MSS clamping on the WireGuard device, all loaded from the
// kernel's nf_tables modules.
func TestKernelWGFirewallTable(t *testing.T) {
	l := newKernelLab(t)
	a := l.AddNode("a")
	setupGlobal(t, []*lab.Node{a})
	a.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	kernelLink(t, a, globalDev)
	table := a.MustExec("nft", "list", "table", "inet", "zlayer_overlay")
	for _, want := range []string{"table inet zlayer_overlay", `"` + globalDev + `"`, "masquerade", "maxseg"} {
		if !strings.Contains(table, want) {
			t.Errorf("our table has no %s:\n%s", want, table)
		}
	}
	if fw := a.Status().Firewall; fw == nil || fw.Table != "zlayer_overlay" || fw.Rules == 0 || fw.LastError != "" {
		t.Errorf("status firewall: %+v", fw)
	}
}

// A kernel device of the same name labelled by another daemon identity is
// refused at setup and at start, with both labels named, and left exactly
// as it was.
func TestKernelWGRefusesAnotherIdentitysDevice(t *testing.T) {
	l := newKernelLab(t)
	a := l.AddNode("a")
	theirs := "zlayer-overlayd:000000000000:wireguard:" + globalDev
	foreign := func() netlinkLink {
		t.Helper()
		a.MustExec("ip", "link", "add", globalDev, "type", "wireguard")
		a.MustExec("ip", "link", "set", globalDev, "alias", theirs)
		a.MustExec("wg", "set", globalDev, "listen-port", "51999")
		return kernelLink(t, a, globalDev)
	}
	untouched := func(before netlinkLink) {
		t.Helper()
		if after := kernelLink(t, a, globalDev); after != before {
			t.Errorf("the other identity's device changed: %+v -> %+v", before, after)
		}
		if d := wgDump(t, a, globalDev); d.Port != 51999 || len(d.Peers) != 0 {
			t.Errorf("the other identity's device was configured: %+v", d)
		}
		if addrs := a.MustExec("ip", "-o", "addr", "show", "dev", globalDev); strings.TrimSpace(addrs) != "" {
			t.Errorf("the other identity's device got addresses:\n%s", addrs)
		}
	}
	ours := regexp.MustCompile(`ours is "zlayer-overlayd:[^":]+:wireguard:` + globalDev + `"`)
	wantRefusal := func(msg string) {
		t.Helper()
		for _, want := range []string{theirs, "another zlayer-overlayd identity", "refusing"} {
			if !strings.Contains(msg, want) {
				t.Errorf("the refusal %q does not say %q", msg, want)
			}
		}
		if !ours.MatchString(msg) {
			t.Errorf("the refusal %q does not name our own label", msg)
		}
	}

	// At setup: an err response, and the daemon serves on.
	before := foreign()
	resp, err := a.Do(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "a", ClusterCIDR: cluster, SliceCIDR: sliceOf(0), WGPort: 51820})
	wantRefusal(errMessage(resp, err))
	untouched(before)
	a.Status()

	// At start: the state wants the device, the name is taken by another
	// identity's device; the daemon refuses to start and says why.
	a.MustExec("ip", "link", "del", globalDev)
	setupGlobal(t, []*lab.Node{a})
	a.Stop()
	a.MustExec("ip", "link", "del", globalDev)
	before = foreign()
	wantRefusal(startFails(t, a))
	untouched(before)

	// Once the operator removed it, the daemon starts and brings its own
	// device back, labelled with its identity.
	a.MustExec("ip", "link", "del", globalDev)
	a.Start()
	if own := kernelLink(t, a, globalDev); !strings.HasPrefix(own.Alias, "zlayer-overlayd:") || own.Alias == theirs {
		t.Fatalf("restored device label %q", own.Alias)
	}
}

// startFails runs the node's daemon on its state and returns its output,
// failing t if it does not exit with an error.
func startFails(t *testing.T, n *lab.Node) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.NS, testbin.Build(t, "zlayer-overlayd"), "--data-dir", n.DataDir).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("the daemon started (or hung) over another identity's device: %v\n%s", err, out)
	}
	return string(out)
}

// NAT traversal sends STUN from the WireGuard port, which kernel WireGuard
// keeps to itself: with STUN servers, auto runs userspace WireGuard and
// status says so, and --wireguard kernel refuses to start, saying why.
func TestKernelWGWithSTUNServersUsesUserspace(t *testing.T) {
	l := newKernelLab(t)
	stunServer := "172.31.0.100:3478"
	a := l.AddNode("a", "--stun-server", stunServer)
	setupGlobal(t, []*lab.Node{a})
	if s := a.Status(); s.WGBackend != "userspace" {
		t.Errorf("with STUN servers, status wg_backend is %q, want userspace", s.WGBackend)
	}
	if links := linksOf(t, a, "dev", globalDev); len(links) != 1 || links[0].LinkInfo.Kind != "tun" {
		t.Errorf("with STUN servers, %s is not wireguard-go's TUN: %+v", globalDev, links)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", a.NS, testbin.Build(t, "zlayer-overlayd"),
		"--data-dir", t.TempDir(), "--wireguard", "kernel", "--stun-server", stunServer).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("--wireguard kernel --stun-server did not refuse to start: %v\n%s", err, out)
	}
	for _, want := range []string{`backend "kernel" requested`, "NAT traversal", "--stun-server"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
}

// TURN relays share the WireGuard port too: turn_servers sent to a daemon
// running kernel WireGuard are answered with an error that says what to
// do, and the device, its peers and traffic stay as they were.
func TestKernelWGRefusesTURNServersInSetup(t *testing.T) {
	l := newKernelLab(t)
	nodes := []*lab.Node{l.AddNode("a"), l.AddNode("b")}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	// The first contact waits for a handshake, which under emulation can
	// take more than the two pings' 1.2 s (seen in CI's 6.1 guest).
	mustPing(t, "a", nodes[0].Ping, st[1].NodeIP)
	before := linksOf(t, nodes[0], "dev", globalDev)

	msg := errMessage(nodes[0].Do(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "a", ClusterCIDR: cluster,
		SliceCIDR: sliceOf(0), WGPort: 51820, NATEnabled: true,
		TURNServers: []protocol.TURNServerConfig{{Address: "172.31.0.100:3478", Username: "u", Credential: "p"}}}))
	if msg == "" {
		t.Fatal("turn_servers on kernel WireGuard were accepted")
	}
	for _, want := range []string{"TURN", "--wireguard userspace"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q: %s", want, msg)
		}
	}
	after := linksOf(t, nodes[0], "dev", globalDev)
	if len(after) != 1 || after[0].LinkInfo.Kind != "wireguard" || len(before) != 1 || after[0].Index != before[0].Index {
		t.Errorf("the refused setup changed the device: before %+v, after %+v", before, after)
	}
	if s := nodes[0].Status(); len(s.Peers) != 1 || s.NAT != nil && len(s.NAT.TURNServers) > 0 {
		t.Errorf("the refused setup left state behind or lost the peer: peers %d, nat %+v", len(s.Peers), s.NAT)
	}
	if err := nodes[0].Ping(st[1].NodeIP, 2); err != nil {
		t.Errorf("no traffic after the refused setup: %v", err)
	}
}
