//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Two- and three-node meshes: every node pings every other node's overlay
// IP, and the real wg tool lists the peers our daemon configured, with a
// recent handshake.
func TestMesh(t *testing.T) {
	for _, size := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d-nodes", size), func(t *testing.T) {
			l := newLab(t)
			var nodes []*lab.Node
			for i := range size {
				nodes = append(nodes, l.AddNode(fmt.Sprintf("n%d", i)))
			}
			st := setupGlobal(t, nodes)
			meshPeers(t, nodes, st, nil)
			for i, n := range nodes {
				for j := range nodes {
					if i != j {
						mustPing(t, n.Name, n.Ping, st[j].NodeIP)
					}
				}
			}
			for i, n := range nodes {
				out := n.MustExec("wg", "show", "zl-prod-g")
				for j := range nodes {
					if i == j {
						continue
					}
					if !strings.Contains(out, "peer: "+st[j].PublicKey) {
						t.Fatalf("wg show on %s does not list %s:\n%s", n.Name, st[j].PublicKey, out)
					}
				}
				if strings.Count(out, "latest handshake:") != size-1 {
					t.Fatalf("wg show on %s: not every peer has a handshake:\n%s", n.Name, out)
				}
				// status reports the same: base64 keys, Unix handshake times.
				s := n.Status()
				if s.PeerCount != uint32(size-1) {
					t.Fatalf("status peer_count %d", s.PeerCount)
				}
				for _, p := range s.Peers {
					if age := time.Since(time.Unix(p.LastHandshakeUnixSecs, 0)); age < 0 || age > time.Minute {
						t.Fatalf("handshake time %d is not a recent Unix time", p.LastHandshakeUnixSecs)
					}
				}
			}
		})
	}
}

// add_peer twice with a new endpoint changes the endpoint without
// resetting the session; allowed IPs round-trip; bad input is refused.
func TestPeerUpsertAndAllowedIPs(t *testing.T) {
	l := newLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	mustPing(t, "a", a.Ping, st[1].NodeIP)

	// Give b a second underlay address and point a at it.
	alt := netip.MustParseAddr("172.31.0.200")
	b.MustExec("ip", "addr", "add", alt.String()+"/24", "dev", "eth0")
	before := a.Status().Peers[0]
	a.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
		PublicKey: st[1].PublicKey, Endpoint: netip.AddrPortFrom(alt, 51820).String(), AllowedIPs: sliceOf(1), PersistentKeepaliveSecs: 25,
	}})
	after := a.Status().Peers[0]
	if after.Endpoint != netip.AddrPortFrom(alt, 51820).String() {
		t.Fatalf("endpoint not updated: %s", after.Endpoint)
	}
	if after.LastHandshakeUnixSecs != before.LastHandshakeUnixSecs {
		t.Fatalf("upsert reset the session: handshake %d -> %d", before.LastHandshakeUnixSecs, after.LastHandshakeUnixSecs)
	}
	mustPing(t, "a", a.Ping, st[1].NodeIP)

	extra := "10.200.99.0/24"
	a.Call(protocol.AddAllowedIP{Pubkey: st[1].PublicKey, CIDR: extra})
	a.Call(protocol.AddAllowedIP{Pubkey: st[1].PublicKey, CIDR: extra})
	if out := a.MustExec("wg", "show", "zl-prod-g", "allowed-ips"); !strings.Contains(out, extra) {
		t.Fatalf("add_allowed_ip not applied:\n%s", out)
	}
	a.Call(protocol.RemoveAllowedIP{Pubkey: st[1].PublicKey, CIDR: extra})
	a.Call(protocol.RemoveAllowedIP{Pubkey: st[1].PublicKey, CIDR: extra})
	if out := a.MustExec("wg", "show", "zl-prod-g", "allowed-ips"); strings.Contains(out, extra) || !strings.Contains(out, sliceOf(1)) {
		t.Fatalf("remove_allowed_ip did not round-trip:\n%s", out)
	}
	for _, c := range []struct {
		req  protocol.Request
		want string
	}{
		{protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: "bad", Endpoint: "1.2.3.4:1", AllowedIPs: "10.0.0.0/8"}}, "wireguard key"},
		{protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: st[1].PublicKey, Endpoint: "1.2.3.4:1", AllowedIPs: "10.0.0.0/99"}}, "allowed IP"},
		{protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: st[1].PublicKey, Endpoint: "no-such-host.invalid:51820", AllowedIPs: sliceOf(1)}}, "resolve"},
	} {
		if msg := errMessage(a.Do(c.req)); !strings.Contains(msg, c.want) {
			t.Errorf("%s: got %q, want an err mentioning %q", c.req.Op(), msg, c.want)
		}
	}
	// The refused requests changed nothing.
	mustPing(t, "a", a.Ping, st[1].NodeIP)
}

// A dedicated service device carries traffic between two nodes on its own
// port.
func TestDedicatedServiceTunnel(t *testing.T) {
	l := newLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	st := setupGlobal(t, nodes)
	var ded [2]protocol.ServiceOverlay
	for i, n := range nodes {
		ded[i] = n.Call(protocol.SetupServiceOverlay{Service: "db", Mode: "dedicated"}).(protocol.ServiceOverlay)
		if ded[i].WGPort == 51820 || ded[i].WGPort == 0 {
			t.Fatalf("dedicated port %d", ded[i].WGPort)
		}
	}
	if ded[0].Subnet == ded[1].Subnet {
		t.Fatalf("both nodes placed db at %s", ded[0].Subnet)
	}
	peerDedicated(t, nodes, ded)
	out := a.MustExec("wg", "show", ded[0].Name)
	if !strings.Contains(out, fmt.Sprintf("listening port: %d", ded[0].WGPort)) || !strings.Contains(out, "latest handshake") || !strings.Contains(out, fmt.Sprintf(":%d", ded[1].WGPort)) {
		t.Fatalf("the dedicated device did not carry the traffic on its own port:\n%s", out)
	}
	if out := a.MustExec("wg", "show", "zl-prod-g"); strings.Contains(out, ded[1].WGPublicKey) {
		t.Fatal("the dedicated peer leaked into the global device")
	}
	_ = st
}

// SIGKILL one node's daemon and restart it: the tunnel comes back within
// seconds with the same keys, ports and node IPs, without anyone
// re-sending anything.
func TestRestartRestoresTheMesh(t *testing.T) {
	l := newLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	mustPing(t, "b", b.Ping, st[0].NodeIP)

	a.Kill()
	start := time.Now()
	a.Start()
	lab.Eventually(t, 5*time.Second, "ping after restart", func() error { return b.Ping(st[0].NodeIP, 1) })
	t.Logf("pings resumed %v after the restart began", time.Since(start).Round(time.Millisecond))
	s := a.Status()
	if s.PublicKey != st[0].PublicKey || s.NodeIP != st[0].NodeIP || s.WGPort != 51820 || s.Interface != st[0].Interface || s.PeerCount != 1 {
		t.Fatalf("identity changed across the restart:\nbefore %+v\nafter  %+v", st[0], s)
	}
}
