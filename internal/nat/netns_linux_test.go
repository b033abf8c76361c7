package nat

// Harness for the privileged tests. wireguard-go opens its sockets in the
// network namespace of the thread that brings the bind up, and its
// goroutines are not pinned to threads, so every simulated host is this
// test binary re-executed under "ip netns exec" and driven over its stdin
// and stdout with JSON lines.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab/nstest"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

const (
	helperEnv   = "ZLTN_NAT_HELPER" // "stun" or "node"
	stunAddrEnv = "ZLTN_STUN_ADDRS" // comma-separated listen addresses of a "stun" helper
)

// TestHelperProcess is not a test: it is a host process the privileged tests
// start inside a network namespace.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "stun":
		runSTUNHelper(os.Stdin, os.Stdout)
	case "node":
		runNode(os.Stdin, os.Stdout)
	default:
		t.Skip("host process for the network-namespace tests; runs only when they re-execute the test binary")
	}
	os.Exit(0)
}

// runSTUNHelper serves STUN on every address in $ZLTN_STUN_ADDRS, says
// "ready", and stops when its stdin closes.
func runSTUNHelper(in io.Reader, out io.Writer) {
	for _, a := range strings.Split(os.Getenv(stunAddrEnv), ",") {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			fmt.Fprintf(out, "listen %s: %v\n", a, err)
			return
		}
		go serveSTUN(pc)
	}
	fmt.Fprintln(out, "ready")
	io.Copy(io.Discard, in)
}

type nodeRequest struct {
	Op       string          `json:"op"`
	Name     string          `json:"name,omitempty"`
	Config   *wgtypes.Config `json:"config,omitempty"`
	Servers  []string        `json:"servers,omitempty"`
	Count    int             `json:"count,omitempty"`
	Interval time.Duration   `json:"interval,omitempty"`
	// Plain opens the device on wireguard-go's default bind, without STUN
	// (the baseline of the throughput benchmark).
	Plain bool `json:"plain,omitempty"`
}

type nodeResponse struct {
	Err string `json:"err,omitempty"`
	// discover: one entry per request, the address or "error: ...".
	Results []string        `json:"results,omitempty"`
	Probe   *probeResult    `json:"probe,omitempty"`
	Device  *wgtypes.Device `json:"device,omitempty"`
}

type probeResult struct {
	Reflexive []netip.AddrPort
	Behaviour string
	LocalPort uint16
	Errors    []string
}

// runNode is a host with one userspace WireGuard device on a nat.Bind.
func runNode(in io.Reader, out io.Writer) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var (
		dev  wg.Device
		bind *Bind
	)
	defer func() {
		if dev != nil {
			dev.Close()
		}
	}()
	dec, enc := json.NewDecoder(in), json.NewEncoder(out)
	for {
		var req nodeRequest
		if dec.Decode(&req) != nil {
			return // the test closed our stdin, or died
		}
		var resp nodeResponse
		err := func() error {
			switch req.Op {
			case "open":
				backend, err := wg.NewBackend(wg.KindUserspace, log)
				if err != nil {
					return err
				}
				opts := wg.Options{Logger: log}
				if !req.Plain {
					bind = NewBind(nil, log)
					opts.Bind = bind
				}
				if dev, err = backend.Open(req.Name, opts); err != nil {
					return err
				}
				return dev.Configure(*req.Config)
			case "configure":
				return dev.Configure(*req.Config)
			case "discover":
				for i := range req.Count {
					if i > 0 {
						time.Sleep(req.Interval)
					}
					server := netip.MustParseAddrPort(req.Servers[i%len(req.Servers)])
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					got, err := bind.Discover(ctx, server)
					cancel()
					if err != nil {
						resp.Results = append(resp.Results, "error: "+err.Error())
					} else {
						resp.Results = append(resp.Results, got.String())
					}
				}
				return nil
			case "probe":
				var servers []netip.AddrPort
				for _, s := range req.Servers {
					servers = append(servers, netip.MustParseAddrPort(s))
				}
				res, err := bind.Probe(context.Background(), servers)
				if err != nil {
					return err
				}
				pr := &probeResult{Reflexive: res.Reflexive, Behaviour: res.Behaviour, LocalPort: res.LocalPort}
				for _, e := range res.Errors {
					pr.Errors = append(pr.Errors, e.Error())
				}
				resp.Probe = pr
				return nil
			case "snapshot":
				d, err := dev.Snapshot()
				resp.Device = d
				return err
			case "close":
				err := dev.Close()
				dev = nil
				return err
			}
			return fmt.Errorf("unknown op %q", req.Op)
		}()
		if err != nil {
			resp.Err = err.Error()
		}
		if enc.Encode(resp) != nil {
			return
		}
	}
}

// host is the test's handle on a helper process.
type host struct {
	*nstest.Helper
	t testing.TB
}

func startHost(t testing.TB, ns, mode string, env ...string) *host {
	t.Helper()
	return &host{nstest.StartHelper(t, ns, append([]string{helperEnv + "=" + mode}, env...)...), t}
}

// startSTUNServers runs our STUN server on addrs inside ns.
func startSTUNServers(t testing.TB, ns string, addrs ...string) {
	t.Helper()
	h := startHost(t, ns, "stun", stunAddrEnv+"="+strings.Join(addrs, ","))
	line, err := h.ReadLine()
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("STUN servers in %s: %q, %v", ns, line, err)
	}
}

func (h *host) call(req nodeRequest) nodeResponse {
	var r nodeResponse
	h.Call(req.Op, req, &r, 2*time.Minute)
	return r
}

func (h *host) must(req nodeRequest) nodeResponse {
	h.t.Helper()
	r := h.call(req)
	if r.Err != "" {
		h.t.Fatalf("%s: %s: %s", h.NS(), req.Op, r.Err)
	}
	return r
}

func requireRoot(t testing.TB, tools ...string) {
	t.Helper()
	nstest.RequireRoot(t, "network namespaces, veth pairs, TUN devices and NAT rules", append([]string{"ip", "iptables", "sysctl"}, tools...)...)
}

var (
	run      = nstest.Run
	randHex  = nstest.RandHex
	newNetns = nstest.NewNetns
)

// natLab is three namespaces:
//
//	node 10.77.1.2 ── 10.77.1.1 router 203.0.113.1 ── 203.0.113.2-.6 internet
//
// The router forwards and masquerades the node's traffic with the given
// iptables MASQUERADE options, and drops unsolicited new connections to
// itself on its WAN side (what a home router does). The internet has no
// route to 10.77.1.0/24: only the NAT gets packets back.
type natLab struct {
	id                string
	node, router, net string // namespace names
}

const (
	routerWAN = "203.0.113.1"
	peerAddr  = "203.0.113.2"
	stunAddr1 = "203.0.113.3"
	stunAddr2 = "203.0.113.4"
	stunAddr3 = "203.0.113.5"
	extraAddr = "203.0.113.6"
)

func newNATLab(t testing.TB, masquerade ...string) *natLab {
	t.Helper()
	r := randHex(t, 6)
	l := &natLab{id: r, node: "zltn-" + r + "-node", router: "zltn-" + r + "-rtr", net: "zltn-" + r + "-net"}
	for _, ns := range []string{l.node, l.router, l.net} {
		newNetns(t, ns)
	}
	lanNode, lanRtr, wanRtr, wanNet := "zltn"+r+"n", "zltn"+r+"l", "zltn"+r+"w", "zltn"+r+"i"
	run(t, "ip", "link", "add", lanNode, "netns", l.node, "type", "veth", "peer", "name", lanRtr, "netns", l.router)
	run(t, "ip", "link", "add", wanRtr, "netns", l.router, "type", "veth", "peer", "name", wanNet, "netns", l.net)
	for _, a := range [][]string{
		{l.node, lanNode, "10.77.1.2/24"},
		{l.router, lanRtr, "10.77.1.1/24"},
		{l.router, wanRtr, routerWAN + "/24"},
		{l.net, wanNet, peerAddr + "/24"},
		{l.net, wanNet, stunAddr1 + "/24"},
		{l.net, wanNet, stunAddr2 + "/24"},
		{l.net, wanNet, stunAddr3 + "/24"},
		{l.net, wanNet, extraAddr + "/24"},
	} {
		run(t, "ip", "-n", a[0], "addr", "add", a[2], "dev", a[1])
		run(t, "ip", "-n", a[0], "link", "set", a[1], "up")
	}
	run(t, "ip", "-n", l.node, "route", "add", "default", "via", "10.77.1.1")
	run(t, "ip", "netns", "exec", l.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, append([]string{"ip", "netns", "exec", l.router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wanRtr, "-j", "MASQUERADE"}, masquerade...)...)
	run(t, "ip", "netns", "exec", l.router, "iptables", "-A", "INPUT", "-i", wanRtr, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
	return l
}

// wgPeer is a host with a WireGuard device on a nat.Bind.
type wgPeer struct {
	*host
	key  wgtypes.Key
	dev  string
	port int
}

// startWGHost opens a device named dev listening on port, with tunnel
// address tunnelCIDR, in ns.
func startWGHost(t testing.TB, ns, dev string, port int, tunnelCIDR string) *wgPeer {
	t.Helper()
	return startWGHostBind(t, ns, dev, port, tunnelCIDR, false)
}

// startWGHostBind is startWGHost, on wireguard-go's default bind when plain.
func startWGHostBind(t testing.TB, ns, dev string, port int, tunnelCIDR string, plain bool) *wgPeer {
	t.Helper()
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := &wgPeer{host: startHost(t, ns, "node"), key: key, dev: dev, port: port}
	p.must(nodeRequest{Op: "open", Name: dev, Plain: plain, Config: &wgtypes.Config{PrivateKey: &key, ListenPort: &port}})
	run(t, "ip", "-n", ns, "addr", "add", tunnelCIDR, "dev", dev)
	run(t, "ip", "-n", ns, "link", "set", dev, "up")
	return p
}

func (p *wgPeer) addPeer(other *wgPeer, endpoint string, allowed string) {
	p.t.Helper()
	pc := wgtypes.PeerConfig{PublicKey: other.key.PublicKey(), AllowedIPs: []net.IPNet{mustCIDR(p.t, allowed)}}
	if endpoint != "" {
		ua, err := net.ResolveUDPAddr("udp", endpoint)
		if err != nil {
			p.t.Fatal(err)
		}
		pc.Endpoint = ua
	}
	p.must(nodeRequest{Op: "configure", Config: &wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}})
}

func (p *wgPeer) endpointOf(other *wgPeer) string {
	p.t.Helper()
	for _, pe := range p.must(nodeRequest{Op: "snapshot"}).Device.Peers {
		if pe.PublicKey == other.key.PublicKey() && pe.Endpoint != nil {
			return pe.Endpoint.String()
		}
	}
	return ""
}

func (p *wgPeer) discover(count int, interval time.Duration, servers ...string) []string {
	p.t.Helper()
	return p.must(nodeRequest{Op: "discover", Servers: servers, Count: count, Interval: interval}).Results
}

func (p *wgPeer) probe(servers ...string) (*probeResult, error) {
	p.t.Helper()
	r := p.call(nodeRequest{Op: "probe", Servers: servers})
	if r.Err != "" {
		return nil, errors.New(r.Err)
	}
	return r.Probe, nil
}

func mustCIDR(t testing.TB, s string) net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return *n
}

// pingAll pings ip from ns count times at interval and returns how many
// replies came back.
func pingAll(t testing.TB, ns, ip string, count int, interval string) (int, string) {
	t.Helper()
	out, _ := exec.Command("ip", "netns", "exec", ns, "ping", "-q", "-c", fmt.Sprint(count), "-i", interval, "-W", "5", ip).CombinedOutput()
	var sent, got int
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "packets transmitted") {
			fmt.Sscanf(line, "%d packets transmitted, %d received", &sent, &got)
		}
	}
	return got, string(out)
}
