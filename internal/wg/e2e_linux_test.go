package wg

// Privileged end-to-end tests: kernel TUN devices in fresh network
// namespaces, real packets over a veth pair, and wg(8) and ping(8) as
// independent observers.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestTunnelBetweenNamespacesAndWgToolInterop(t *testing.T) {
	requireRoot(t, "ping", "wg")
	start := time.Now()
	tn := newTwoNodes(t)
	if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
		t.Fatalf("no traffic through the tunnel: %v", err)
	}
	if err := ping(tn.b.ns, "10.202.0.1"); err != nil {
		t.Fatalf("no traffic back through the tunnel: %v", err)
	}

	// wg(8) reads our device through the UAPI socket.
	pubB := tn.keyB.PublicKey().String()
	show := run(t, "ip", "netns", "exec", tn.a.ns, "wg", "show", tn.a.dev)
	for _, want := range []string{"interface: " + tn.a.dev, "public key: " + tn.keyA.PublicKey().String(), "listening port: 51820",
		"peer: " + pubB, "endpoint: 10.201.0.2:51820", "allowed ips: 10.202.0.2/32", "latest handshake:"} {
		if !strings.Contains(show, want) {
			t.Errorf("wg show does not list %q:\n%s", want, show)
		}
	}
	hsLine := strings.Fields(run(t, "ip", "netns", "exec", tn.a.ns, "wg", "show", tn.a.dev, "latest-handshakes"))
	if len(hsLine) != 2 || hsLine[0] != pubB {
		t.Fatalf("wg show latest-handshakes = %q", hsLine)
	}
	hsUnix, _ := strconv.ParseInt(hsLine[1], 10, 64)
	if hsUnix < start.Unix()-1 || hsUnix > time.Now().Unix()+1 {
		t.Errorf("wg reports handshake at %d, outside this test (%d..now)", hsUnix, start.Unix())
	}

	// Snapshot: absolute handshake time, base64-able keys, the endpoint in use.
	snap := tn.a.snapshot()
	if snap.Name != tn.a.dev || snap.Type != wgtypes.Userspace || snap.PublicKey != tn.keyA.PublicKey() || snap.ListenPort != wgPort {
		t.Errorf("snapshot device fields: %+v", snap)
	}
	if len(snap.Peers) != 1 {
		t.Fatalf("snapshot has %d peers", len(snap.Peers))
	}
	p := snap.Peers[0]
	// Same clock as wg's view (a rekey in between may only move it on).
	if hs := p.LastHandshakeTime.Unix(); hs < hsUnix || hs > time.Now().Unix()+1 {
		t.Errorf("snapshot handshake %v (%d), wg said %d", p.LastHandshakeTime, hs, hsUnix)
	}
	if k, err := ParseKey(p.PublicKey.String()); err != nil || k.String() != pubB {
		t.Errorf("peer key %v does not round-trip: %v", p.PublicKey, err)
	}
	if p.Endpoint.String() != "10.201.0.2:51820" || p.ReceiveBytes == 0 || p.TransmitBytes == 0 {
		t.Errorf("peer endpoint %v rx %d tx %d", p.Endpoint, p.ReceiveBytes, p.TransmitBytes)
	}

	// wg set writes through the socket; our in-process Snapshot sees it.
	run(t, "ip", "netns", "exec", tn.a.ns, "wg", "set", tn.a.dev, "peer", pubB, "allowed-ips", "10.202.0.2/32,10.203.0.0/16", "persistent-keepalive", "13")
	p = tn.a.peer(tn.keyB.PublicKey())
	if got := allowedSorted(p.AllowedIPs); got != "10.202.0.2/32 10.203.0.0/16" || p.PersistentKeepaliveInterval != 13*time.Second {
		t.Errorf("after wg set: allowed %q keepalive %v", got, p.PersistentKeepaliveInterval)
	}
	// And the other way: Configure in-process, wg reads it.
	tn.a.configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: tn.keyB.PublicKey(), UpdateOnly: true,
		ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{mustCIDR(t, "10.202.0.2/32"), mustCIDR(t, "10.204.0.0/24")}}}})
	allowed := run(t, "ip", "netns", "exec", tn.a.ns, "wg", "show", tn.a.dev, "allowed-ips")
	if !strings.Contains(allowed, "10.204.0.0/24") || strings.Contains(allowed, "10.203.0.0/16") {
		t.Errorf("wg show allowed-ips after Configure: %q", allowed)
	}
	if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
		t.Errorf("tunnel broken after the reconfiguration: %v", err)
	}
}

func TestTUNOffloadsAreOn(t *testing.T) {
	requireRoot(t, "ethtool")
	tn := newTwoNodes(t)
	out := run(t, "ip", "netns", "exec", tn.a.ns, "ethtool", "-k", tn.a.dev)
	// wireguard-go asks for the virtio-net header with TSO; the kernel then
	// hands it large TCP segments to encrypt in batches.
	for _, want := range []string{"tcp-segmentation-offload: on", "tx-checksumming: on"} {
		if !strings.Contains(out, want) {
			t.Errorf("ethtool -k %s does not show %q", tn.a.dev, want)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "segmentation") || strings.Contains(line, "receive-offload") || strings.Contains(line, "checksumming") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

func TestUpsertKeepsSessionOnRealTunnel(t *testing.T) {
	requireRoot(t, "ping")
	tn := newTwoNodes(t)
	if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
		t.Fatal(err)
	}
	pubB := tn.keyB.PublicKey()
	hs := tn.a.peer(pubB).LastHandshakeTime
	if hs.IsZero() {
		t.Fatal("no handshake after ping")
	}

	// Move B's endpoint to a second address of B and turn on keepalive.
	run(t, "ip", "-n", tn.b.ns, "addr", "add", "10.201.0.3/24", "dev", tn.vethB)
	ka := 5 * time.Second
	tn.a.configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey:                   pubB,
		UpdateOnly:                  true,
		Endpoint:                    &net.UDPAddr{IP: net.IPv4(10, 201, 0, 3), Port: wgPort},
		PersistentKeepaliveInterval: &ka,
	}}})
	p := tn.a.peer(pubB)
	if !p.LastHandshakeTime.Equal(hs) {
		t.Errorf("upsert reset the session: handshake %v, was %v", p.LastHandshakeTime, hs)
	}
	if p.Endpoint.String() != "10.201.0.3:51820" || p.PersistentKeepaliveInterval != ka {
		t.Errorf("upsert not applied: endpoint %v keepalive %v", p.Endpoint, p.PersistentKeepaliveInterval)
	}
	txBefore := p.TransmitBytes
	if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
		t.Fatalf("traffic stopped after the upsert: %v", err)
	}
	// wireguard-go counts a batch's bytes once its send returns, so the
	// reply can be back before the count is in: wait for it, briefly.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p = tn.a.peer(pubB); p.TransmitBytes > txBefore || time.Now().After(deadline) {
			break
		}
	}
	if !p.LastHandshakeTime.Equal(hs) || p.TransmitBytes <= txBefore {
		t.Errorf("after more traffic: handshake %v (was %v), tx %d (was %d)", p.LastHandshakeTime, hs, p.TransmitBytes, txBefore)
	}
	// B saw A's packets arrive from the new path's peer address unchanged:
	// A still sends from 10.201.0.1.
	if ep := tn.b.peer(tn.keyA.PublicKey()).Endpoint.String(); ep != "10.201.0.1:51820" {
		t.Errorf("B sees A at %s", ep)
	}
}

func TestRoamingEndpointIsReported(t *testing.T) {
	requireRoot(t, "ping")
	tn := newTwoNodes(t)
	if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
		t.Fatal(err)
	}
	// A's traffic to B now leaves from a new address (as after a NAT
	// rebinding); B learns it from A's packets alone.
	run(t, "ip", "-n", tn.a.ns, "addr", "add", "10.201.0.4/24", "dev", tn.vethA)
	run(t, "ip", "-n", tn.a.ns, "route", "add", "10.201.0.2/32", "dev", tn.vethA, "src", "10.201.0.4")
	// wireguard-go notices the route change asynchronously; until it does,
	// A may still send from its cached source address.
	ep := ""
	for range 10 {
		if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
			t.Fatal(err)
		}
		if ep = tn.b.peer(tn.keyA.PublicKey()).Endpoint.String(); ep == "10.201.0.4:51820" {
			return
		}
	}
	t.Errorf("B reports A at %s, want the roamed endpoint 10.201.0.4:51820", ep)
}

func TestConfigureRoundTripOnRealDevice(t *testing.T) {
	requireRoot(t)
	r := randHex(t, 6)
	ns := "zltw-" + r + "-c"
	newNetns(t, ns)
	n := startNode(t, ns)
	n.open("zltw" + r + "c")
	priv, _ := GenerateKey()
	peer := keyN(0x42)
	n.configure(wgtypes.Config{PrivateKey: &priv, ListenPort: new(0), Peers: []wgtypes.PeerConfig{{
		PublicKey: peer, AllowedIPs: []net.IPNet{mustCIDR(t, "10.1.0.0/16"), mustCIDR(t, "fd00::/64")},
	}}})
	n.configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{mustCIDR(t, "10.2.0.0/16")}}}})
	if got := allowedSorted(n.peer(peer).AllowedIPs); got != "10.2.0.0/16" {
		t.Errorf("after replace: %q", got)
	}
	n.configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer, AllowedIPs: []net.IPNet{mustCIDR(t, "10.1.0.0/16")}}}})
	if got := allowedSorted(n.peer(peer).AllowedIPs); got != "10.1.0.0/16 10.2.0.0/16" {
		t.Errorf("after add: %q", got)
	}
	n.configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer, ReplaceAllowedIPs: true}}})
	if got := allowedSorted(n.peer(peer).AllowedIPs); got != "" {
		t.Errorf("after clearing: %q", got)
	}
	if r := n.call(nodeRequest{Op: "configure", Config: &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: keyN(0x43), Remove: true}}}}); r.Err != "" {
		t.Errorf("removing an unknown peer failed: %s", r.Err)
	}
	snap := n.snapshot()
	if len(snap.Peers) != 1 || snap.PublicKey != priv.PublicKey() || snap.ListenPort == 0 {
		t.Errorf("snapshot: %+v", snap)
	}
}

func TestCloseRemovesLinkSocketAndGoroutines(t *testing.T) {
	requireRoot(t, "wg")
	r := randHex(t, 6)
	ns, dev := "zltw-"+r+"-d", "zltw"+r+"d"
	newNetns(t, ns)
	n := startNode(t, ns)
	n.open(dev)
	sock := uapiSocketPath(dev)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("UAPI socket %s: %v", sock, err)
	}
	details := run(t, "ip", "-d", "-n", ns, "link", "show", dev)
	if !strings.Contains(details, "mtu 1420") || !strings.Contains(details, "tun type tun") {
		t.Errorf("link is not a TUN with MTU 1420:\n%s", details)
	}
	if !strings.Contains(details, "state DOWN") {
		t.Errorf("Open set the link up; that is the caller's job:\n%s", details)
	}
	if out := run(t, "ip", "netns", "exec", ns, "wg", "show", dev); !strings.Contains(out, "interface: "+dev) {
		t.Errorf("wg show: %s", out)
	}

	n.must(nodeRequest{Op: "close"}) // the node also checks its goroutines
	if out, err := exec.Command("ip", "-n", ns, "link", "show", dev).CombinedOutput(); err == nil {
		t.Errorf("link still exists after Close:\n%s", out)
	}
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("UAPI socket still exists after Close: %v", err)
	}
}

// staleSocket leaves a socket file nobody listens on, as a crash does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(uapiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	t.Cleanup(func() { os.Remove(path) })
}

func TestStaleSocketIsReplaced(t *testing.T) {
	requireRoot(t, "wg")
	r := randHex(t, 6)
	ns, dev := "zltw-"+r+"-e", "zltw"+r+"e"
	staleSocket(t, uapiSocketPath(dev))
	if _, err := net.Dial("unix", uapiSocketPath(dev)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("test setup: socket is not stale: %v", err)
	}
	newNetns(t, ns)
	n := startNode(t, ns)
	n.open(dev)
	if out := run(t, "ip", "netns", "exec", ns, "wg", "show", dev); !strings.Contains(out, "interface: "+dev) {
		t.Errorf("wg show does not reach the new device: %s", out)
	}
}

func TestLiveSocketIsRefused(t *testing.T) {
	requireRoot(t)
	r := randHex(t, 6)
	ns, dev := "zltw-"+r+"-f", "zltw"+r+"f"
	// Another process (here: this one) serves the name.
	if err := os.MkdirAll(uapiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", uapiSocketPath(dev))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	newNetns(t, ns)
	n := startNode(t, ns)
	resp := n.call(nodeRequest{Op: "open", Name: dev})
	for _, want := range []string{"already exists", "another process serves its UAPI socket", uapiSocketPath(dev)} {
		if !strings.Contains(resp.Err, want) {
			t.Errorf("Open error %q does not say %q", resp.Err, want)
		}
	}
	if out, err := exec.Command("ip", "-n", ns, "link", "show", dev).CombinedOutput(); err == nil {
		t.Errorf("a link was created although Open was refused:\n%s", out)
	}
	if _, err := os.Stat(uapiSocketPath(dev)); err != nil {
		t.Errorf("the other process's socket was removed: %v", err)
	}
}

func TestSecondOpenOfSameNameIsRefused(t *testing.T) {
	requireRoot(t)
	r := randHex(t, 6)
	ns, dev := "zltw-"+r+"-g", "zltw"+r+"g"
	newNetns(t, ns)
	n := startNode(t, ns)
	n.open(dev)
	resp := n.call(nodeRequest{Op: "open", Name: dev})
	if !strings.Contains(resp.Err, "already exists") {
		t.Errorf("second Open: %q", resp.Err)
	}
	n.snapshot() // the first device is unharmed
}

func TestForeignLinkIsRefusedAndKept(t *testing.T) {
	requireRoot(t)
	r := randHex(t, 6)
	ns, dev := "zltw-"+r+"-h", "zltw"+r+"h"
	newNetns(t, ns)
	// A persistent TUN: TUNSETIFF would silently attach to it.
	run(t, "ip", "-n", ns, "tuntap", "add", "mode", "tun", "name", dev)
	n := startNode(t, ns)
	resp := n.call(nodeRequest{Op: "open", Name: dev})
	for _, want := range []string{"tuntap link named \"" + dev + "\" already exists", "not ours", "refusing"} {
		if !strings.Contains(resp.Err, want) {
			t.Errorf("Open error %q does not say %q", resp.Err, want)
		}
	}
	run(t, "ip", "-n", ns, "link", "show", dev) // still there
	if _, err := os.Stat(uapiSocketPath(dev)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a UAPI socket was published for a refused device: %v", err)
	}
}

// TestBulkTCPArrivesIntact sends 16 MiB each way at once through the
// tunnel over TCP and compares what arrived with what was sent. The data
// path gathers TSO segments and coalesced payloads with iovecs and trusts
// the TCP checksums of the decrypted packets it coalesces
// (third_party/wireguard-patches): a payload gathered at the wrong place
// or length would pass every checksum the kernel still computes, and show
// only here.
func TestBulkTCPArrivesIntact(t *testing.T) {
	requireRoot(t, "ping")
	tn := newTwoNodes(t)
	if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
		t.Fatal(err)
	}
	const size = 16 << 20 // hundreds of coalesced super-packets; 10 s in an emulated VM
	tn.a.must(nodeRequest{Op: "sink", Addr: "10.202.0.1:5201"})
	tn.b.must(nodeRequest{Op: "sink", Addr: "10.202.0.2:5201"})
	tn.a.must(nodeRequest{Op: "source", Addr: "10.202.0.2:5201", Bytes: size, Seed: 1})
	tn.b.must(nodeRequest{Op: "source", Addr: "10.202.0.1:5201", Bytes: size, Seed: 2})
	for _, dir := range []struct{ from, to *node }{{tn.a, tn.b}, {tn.b, tn.a}} {
		sent := dir.from.must(nodeRequest{Op: "sent"})
		got := dir.to.must(nodeRequest{Op: "sunk"})
		if sent.Bytes != size || got.Bytes != size {
			t.Fatalf("%s sent %d bytes of %d, %s received %d", dir.from.ns, sent.Bytes, size, dir.to.ns, got.Bytes)
		}
		if got.SHA256 != sent.SHA256 {
			t.Errorf("the 16 MiB %s received differ from what %s sent (sha256 %s, sent %s)", dir.to.ns, dir.from.ns, got.SHA256, sent.SHA256)
		}
	}
}

// TestIperfThroughput measures, for the record, TCP throughput through the
// tunnel and over the bare veth. It asserts nothing about the numbers and
// runs only when ZLTW_IPERF=1, because it takes about 12 seconds.
func TestIperfThroughput(t *testing.T) {
	if os.Getenv("ZLTW_IPERF") != "1" {
		t.Skip("set ZLTW_IPERF=1 to measure iperf3 throughput")
	}
	requireRoot(t, "iperf3", "ping")
	tn := newTwoNodes(t)
	if err := ping(tn.a.ns, "10.202.0.2"); err != nil {
		t.Fatal(err)
	}
	for _, target := range []struct{ name, ip string }{{"wireguard tunnel", "10.202.0.2"}, {"raw veth", "10.201.0.2"}} {
		srv := exec.Command("ip", "netns", "exec", tn.b.ns, "iperf3", "-s", "-1", "-B", target.ip)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		var out []byte
		var err error
		for range 20 { // wait for the server to listen
			out, err = exec.Command("ip", "netns", "exec", tn.a.ns, "iperf3", "-c", target.ip, "-t", "5", "-J").Output()
			if err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		srv.Process.Kill()
		srv.Wait()
		if err != nil {
			t.Fatalf("iperf3 to %s: %v\n%s", target.ip, err, out)
		}
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatal(err)
		}
		t.Logf("iperf3 -t 5, one stream, %s: %s", target.name, fmt.Sprintf("%.2f Gbit/s", res.End.SumReceived.BitsPerSecond/1e9))
		if res.End.SumReceived.BitsPerSecond == 0 {
			t.Errorf("no data received over the %s", target.name)
		}
	}
}

func TestUserspaceOpenWithoutPrivilegeFailsClearly(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("checks the error an unprivileged user gets; running as root")
	}
	name := "zltw" + randHex(t, 6) + "u"
	_, err := userspaceBackend{}.Open(name, Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		t.Fatal("an unprivileged user created a TUN device")
	}
	if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("error %q does not name the device and the missing capability", err)
	}
}
