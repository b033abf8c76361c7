package wg

// These tests run real wireguard-go devices, real handshakes and real UDP on
// the loopback interface, with in-memory TUNs in place of kernel ones, so
// they need no privileges. The root-only tests in e2e_linux_test.go repeat
// the important ones on kernel TUN devices in separate network namespaces.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

type memNode struct {
	dev  *userspaceDevice
	tun  *tuntest.ChannelTUN
	key  wgtypes.Key
	ip   netip.Addr
	port int
}

// countingBind counts how often wireguard-go opens its UDP sockets.
type countingBind struct {
	conn.Bind
	opens atomic.Int32
}

func (b *countingBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.opens.Add(1)
	return b.Bind.Open(port)
}

func newMemNode(t *testing.T, ip string, bind conn.Bind) *memNode {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ct := tuntest.NewChannelTUN()
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	d, err := startUserspace("zltwmem", ct.TUN(), bind, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Configure(wgtypes.Config{PrivateKey: &key, ListenPort: new(0)}); err != nil {
		t.Fatal(err)
	}
	snap, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if snap.ListenPort == 0 {
		t.Fatal("device has no listen port after configuring port 0")
	}
	return &memNode{dev: d, tun: ct, key: key, ip: netip.MustParseAddr(ip), port: snap.ListenPort}
}

func (n *memNode) peerConfig(endpointIP string) wgtypes.PeerConfig {
	return wgtypes.PeerConfig{
		PublicKey:  n.key.PublicKey(),
		Endpoint:   &net.UDPAddr{IP: net.ParseIP(endpointIP), Port: n.port},
		AllowedIPs: []net.IPNet{{IP: n.ip.AsSlice(), Mask: net.CIDRMask(32, 32)}},
	}
}

func memPair(t *testing.T) (a, b *memNode) {
	t.Helper()
	a, b = newMemNode(t, "10.0.0.1", nil), newMemNode(t, "10.0.0.2", nil)
	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{b.peerConfig("127.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	if err := b.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{a.peerConfig("127.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// send pushes an ICMP packet into from's TUN and waits for it to come out
// of to's TUN, decrypted.
func send(t *testing.T, from, to *memNode) {
	t.Helper()
	if err := trySend(from, to); err != nil {
		t.Fatal(err)
	}
}

func trySend(from, to *memNode) error {
	pkt := tuntest.Ping(to.ip, from.ip)
	deadline := time.After(10 * time.Second)
	select {
	case from.tun.Outbound <- pkt:
	case <-deadline:
		return fmt.Errorf("%v's device never read the packet from its TUN", from.ip)
	}
	for {
		select {
		case got := <-to.tun.Inbound:
			if string(got) == string(pkt) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("packet %v -> %v never came out of the tunnel", from.ip, to.ip)
		}
	}
}

func peerOf(t *testing.T, n *memNode, pub wgtypes.Key) wgtypes.Peer {
	t.Helper()
	snap, err := n.dev.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range snap.Peers {
		if p.PublicKey == pub {
			return p
		}
	}
	t.Fatalf("peer %s not in snapshot of %v", pub, n.ip)
	return wgtypes.Peer{}
}

func TestMemSnapshotReportsWhatWireGuardSees(t *testing.T) {
	a, b := memPair(t)
	if hs := peerOf(t, a, b.key.PublicKey()).LastHandshakeTime; !hs.IsZero() {
		t.Fatalf("handshake time before any traffic = %v, want zero", hs)
	}
	before := time.Now()
	send(t, a, b)
	send(t, b, a)
	after := time.Now()

	snap, err := a.dev.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if snap.Name != "zltwmem" || snap.Type != wgtypes.Userspace || snap.PublicKey != a.key.PublicKey() ||
		snap.PrivateKey != a.key || snap.ListenPort != a.port {
		t.Errorf("device fields wrong: name %q type %v pub %v port %d", snap.Name, snap.Type, snap.PublicKey, snap.ListenPort)
	}
	if len(snap.Peers) != 1 {
		t.Fatalf("%d peers, want 1", len(snap.Peers))
	}
	p := snap.Peers[0]
	// An absolute time from this test's window, not an age since the
	// handshake (the reference implementation reported ages).
	if p.LastHandshakeTime.Before(before.Add(-time.Second)) || p.LastHandshakeTime.After(after.Add(time.Second)) {
		t.Errorf("LastHandshakeTime %v is outside the test window %v..%v", p.LastHandshakeTime, before, after)
	}
	if p.Endpoint.String() != fmt.Sprintf("127.0.0.1:%d", b.port) {
		t.Errorf("endpoint %v, want 127.0.0.1:%d", p.Endpoint, b.port)
	}
	if p.ReceiveBytes == 0 || p.TransmitBytes == 0 {
		t.Errorf("rx %d tx %d, want both > 0", p.ReceiveBytes, p.TransmitBytes)
	}
	if k, err := ParseKey(p.PublicKey.String()); err != nil || k != b.key.PublicKey() {
		t.Errorf("peer key does not round-trip through base64: %v %v", k, err)
	}
}

func TestMemUpsertKeepsSession(t *testing.T) {
	a, b := memPair(t)
	bpub := b.key.PublicKey()
	send(t, a, b)
	send(t, b, a)
	hs := peerOf(t, a, bpub).LastHandshakeTime
	if hs.IsZero() {
		t.Fatal("no handshake after traffic")
	}

	ka := 7 * time.Second
	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey:                   bpub,
		UpdateOnly:                  true,
		Endpoint:                    &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: b.port},
		PersistentKeepaliveInterval: &ka,
		AllowedIPs:                  []net.IPNet{mustCIDR(t, "10.7.0.0/16")},
	}}}); err != nil {
		t.Fatal(err)
	}
	p := peerOf(t, a, bpub)
	if !p.LastHandshakeTime.Equal(hs) {
		t.Errorf("handshake time changed from %v to %v: the upsert reset the session", hs, p.LastHandshakeTime)
	}
	if p.Endpoint.String() != fmt.Sprintf("127.0.0.2:%d", b.port) || p.PersistentKeepaliveInterval != ka {
		t.Errorf("update not applied: endpoint %v keepalive %v", p.Endpoint, p.PersistentKeepaliveInterval)
	}
	if got := prefixes(p.AllowedIPs); got != "10.0.0.2/32 10.7.0.0/16" {
		t.Errorf("allowed IPs %q, want the new one added to the old", got)
	}

	send(t, a, b)
	send(t, b, a)
	if p := peerOf(t, a, bpub); !p.LastHandshakeTime.Equal(hs) {
		t.Errorf("traffic after the upsert needed a new handshake (%v, was %v)", p.LastHandshakeTime, hs)
	}

	// The observation can tell a lost session: removing and re-adding the
	// peer does reset it.
	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: bpub, Remove: true}, b.peerConfig("127.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	if p := peerOf(t, a, bpub); !p.LastHandshakeTime.IsZero() {
		t.Errorf("re-created peer still reports handshake %v", p.LastHandshakeTime)
	}
}

func prefixes(ns []net.IPNet) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = n.String()
	}
	return strings.Join(s, " ")
}

func TestMemAllowedIPsAndRemove(t *testing.T) {
	a := newMemNode(t, "10.0.0.1", nil)
	peer := keyN(0x77)
	steps := []struct {
		name string
		pc   wgtypes.PeerConfig
		want string
	}{
		{"create with two", wgtypes.PeerConfig{AllowedIPs: []net.IPNet{mustCIDR(t, "10.1.0.0/16"), mustCIDR(t, "fd00:1::/64")}}, "10.1.0.0/16 fd00:1::/64"},
		{"add without replace", wgtypes.PeerConfig{AllowedIPs: []net.IPNet{mustCIDR(t, "10.2.0.0/16")}}, "10.1.0.0/16 10.2.0.0/16 fd00:1::/64"},
		{"replace with one", wgtypes.PeerConfig{ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{mustCIDR(t, "10.3.0.0/16")}}, "10.3.0.0/16"},
		{"replace with the old two again", wgtypes.PeerConfig{ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{mustCIDR(t, "10.1.0.0/16"), mustCIDR(t, "fd00:1::/64")}}, "10.1.0.0/16 fd00:1::/64"},
		{"replace with none clears", wgtypes.PeerConfig{ReplaceAllowedIPs: true}, ""},
	}
	for _, s := range steps {
		s.pc.PublicKey = peer
		if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{s.pc}}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := allowedSorted(peerOf(t, a, peer).AllowedIPs); got != s.want {
			t.Errorf("%s: allowed IPs %q, want %q", s.name, got, s.want)
		}
	}

	unknown := keyN(0x78)
	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: unknown, Remove: true}}}); err != nil {
		t.Errorf("removing an unknown peer: %v", err)
	}
	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: unknown, UpdateOnly: true, AllowedIPs: []net.IPNet{mustCIDR(t, "10.9.0.0/16")}}}}); err != nil {
		t.Errorf("update-only of an unknown peer: %v", err)
	}
	snap, _ := a.dev.Snapshot()
	if len(snap.Peers) != 1 || snap.Peers[0].PublicKey != peer {
		t.Errorf("peers after removing/updating an unknown one: %+v, want only %v", snap.Peers, peer)
	}

	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer, Remove: true}}}); err != nil {
		t.Fatal(err)
	}
	if snap, _ := a.dev.Snapshot(); len(snap.Peers) != 0 {
		t.Errorf("peer still present after Remove: %+v", snap.Peers)
	}
}

// allowedSorted lists prefixes sorted, since WireGuard reports them in trie
// order.
func allowedSorted(ns []net.IPNet) string {
	s := strings.Fields(prefixes(ns))
	slices.Sort(s)
	return strings.Join(s, " ")
}

func TestMemReplacePeersKeepsSurvivingSessions(t *testing.T) {
	a, b := memPair(t)
	bpub := b.key.PublicKey()
	stranger := keyN(0x55)
	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: stranger, AllowedIPs: []net.IPNet{mustCIDR(t, "10.5.0.0/16")}}}}); err != nil {
		t.Fatal(err)
	}
	ka := 9 * time.Second
	if err := a.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: bpub, PersistentKeepaliveInterval: &ka}}}); err != nil {
		t.Fatal(err)
	}
	send(t, a, b)
	send(t, b, a)
	hs := peerOf(t, a, bpub).LastHandshakeTime

	// The restart path: restore the full desired peer set in one call.
	want := b.peerConfig("127.0.0.1")
	want.AllowedIPs = append(want.AllowedIPs, mustCIDR(t, "10.8.0.0/16"))
	if err := a.dev.Configure(wgtypes.Config{ReplacePeers: true, Peers: []wgtypes.PeerConfig{want}}); err != nil {
		t.Fatal(err)
	}
	snap, _ := a.dev.Snapshot()
	if len(snap.Peers) != 1 || snap.Peers[0].PublicKey != bpub {
		t.Fatalf("peers after replace: %+v, want only b", snap.Peers)
	}
	p := snap.Peers[0]
	if !p.LastHandshakeTime.Equal(hs) {
		t.Errorf("replace reset the surviving peer's session (handshake %v, was %v)", p.LastHandshakeTime, hs)
	}
	if got := allowedSorted(p.AllowedIPs); got != "10.0.0.2/32 10.8.0.0/16" {
		t.Errorf("allowed IPs %q", got)
	}
	if p.PersistentKeepaliveInterval != 0 {
		t.Errorf("keepalive %v survived a replace that did not list it", p.PersistentKeepaliveInterval)
	}
	send(t, a, b)
}

func TestMemSameListenPortDoesNotRebind(t *testing.T) {
	bind := &countingBind{Bind: conn.NewDefaultBind()}
	a := newMemNode(t, "10.0.0.1", bind)
	opens := bind.opens.Load()
	if err := a.dev.Configure(wgtypes.Config{ListenPort: &a.port}); err != nil {
		t.Fatal(err)
	}
	if got := bind.opens.Load(); got != opens {
		t.Errorf("setting the current port reopened the sockets (%d opens, was %d)", got, opens)
	}
	if err := a.dev.Configure(wgtypes.Config{ListenPort: new(0)}); err != nil {
		t.Fatal(err)
	}
	if got := bind.opens.Load(); got != opens+1 {
		t.Errorf("asking for a new port opened the sockets %d times, want once", got-opens)
	}
}

func TestMemInvalidConfigIsNotPartlyApplied(t *testing.T) {
	a := newMemNode(t, "10.0.0.1", nil)
	bad := wgtypes.Config{Peers: []wgtypes.PeerConfig{
		{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.1.0.0/16")}},
		{PublicKey: keyN(2), Endpoint: &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1)}},
	}}
	err := a.dev.Configure(bad)
	if err == nil || !strings.Contains(err.Error(), `configure wireguard device "zltwmem"`) || !strings.Contains(err.Error(), keyN(2).String()) {
		t.Fatalf("err = %v, want one naming the device and the bad peer", err)
	}
	if snap, _ := a.dev.Snapshot(); len(snap.Peers) != 0 {
		t.Errorf("the valid first peer was applied although the config was rejected: %+v", snap.Peers)
	}
}

func TestMemCloseStopsEverything(t *testing.T) {
	baseline := runtime.NumGoroutine()
	a, b := memPair(t)
	send(t, a, b)
	a.dev.Close()
	b.dev.Close()
	if err := a.dev.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := a.dev.Configure(wgtypes.Config{}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Configure after Close: %v, want net.ErrClosed", err)
	}
	if _, err := a.dev.Snapshot(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Snapshot after Close: %v, want net.ErrClosed", err)
	}
	if leaked := waitGoroutines(baseline); leaked != "" {
		t.Errorf("goroutines left after Close:\n%s", leaked)
	}
}

// waitGoroutines waits for the goroutine count to drop back to baseline and
// returns a stack dump if it does not. Goroutines finish asynchronously
// after the calls that stop them, so this polls instead of sampling once.
func waitGoroutines(baseline int) string {
	for range 200 {
		if runtime.NumGoroutine() <= baseline {
			return ""
		}
		time.Sleep(50 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	return fmt.Sprintf("%d goroutines, baseline %d\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
}
