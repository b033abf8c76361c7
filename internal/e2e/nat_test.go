//go:build linux

package e2e

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Two nodes, each behind its own NAT router, a real STUN server (coturn)
// on "the internet": each daemon finds its router's public address from
// its WireGuard port; given each other's reflexive endpoints the nodes
// punch through and ping; candidates with a wrong and a right endpoint end
// on the right one with a nat_endpoint_changed event.
func TestNATTraversal(t *testing.T) {
	if _, err := exec.LookPath("turnserver"); err != nil {
		t.Skip("needs coturn's turnserver (apt-get install coturn)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	l := newLab(t, "--stun-server", "172.31.0.100:3478")
	stun := l.AddHost("stun", 100)
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	stun.Start("turnserver", "-n", "-S", "-z", "--no-cli", "--no-tls", "--no-dtls", "-L", stun.Addr.String(), "-p", "3478",
		"--log-file", "stdout", "--simple-log", "--pidfile", dir+"/turnserver.pid", "--userdb", dir+"/turndb")
	r1 := l.AddRouter("r1", 11, netip.MustParsePrefix("192.168.1.0/24"))
	r2 := l.AddRouter("r2", 12, netip.MustParsePrefix("192.168.2.0/24"))
	a := l.AddNodeBehind(r1, "a")
	b := l.AddNodeBehind(r2, "b")
	nodes := []*lab.Node{a, b}
	st := make([]protocol.StatusSnapshot, 2)
	for i, n := range nodes {
		n.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: n.Name, ClusterCIDR: cluster, SliceCIDR: sliceOf(i), WGPort: 51820, NATEnabled: true})
	}
	routers := []*lab.Router{r1, r2}
	refl := make([]string, 2)
	for i, n := range nodes {
		n.Call(protocol.NATTick{})
		lab.Eventually(t, 10*time.Second, n.Name+" reflexive endpoint", func() error {
			st[i] = n.Status()
			if st[i].NAT == nil || len(st[i].NAT.ReflexiveAddrs) == 0 {
				return errf("no reflexive endpoint yet: %+v", st[i].NAT)
			}
			return nil
		})
		refl[i] = st[i].NAT.ReflexiveAddrs[0]
		if !strings.HasPrefix(refl[i], routers[i].Public.String()+":") {
			t.Fatalf("%s's reflexive endpoint %s is not its router's public address %s", n.Name, refl[i], routers[i].Public)
		}
		if st[i].NAT.Behaviour == "" || st[i].NAT.LastRefreshUnix == 0 {
			t.Fatalf("status nat %+v", st[i].NAT)
		}
	}
	// a gets b's endpoint only as the second of its candidates, after a
	// wrong one; b gets a's reflexive endpoint directly.
	wrong := netip.AddrPortFrom(r2.Public, 40000).String()
	events := a.Client().Events()
	a.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: st[1].PublicKey, Endpoint: wrong, AllowedIPs: sliceOf(1), PersistentKeepaliveSecs: 5},
		Candidates: []string{refl[1]}})
	b.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: st[0].PublicKey, Endpoint: refl[0], AllowedIPs: sliceOf(0), PersistentKeepaliveSecs: 5}})
	deadline := time.After(90 * time.Second)
	for done := false; !done; {
		select {
		case ev := <-events:
			if e, ok := ev.(protocol.NATEndpointChanged); ok && e.Pubkey == st[1].PublicKey {
				if e.Endpoint != refl[1] {
					t.Fatalf("ended on %s, want %s", e.Endpoint, refl[1])
				}
				done = true
			}
		case <-deadline:
			out, _ := a.Exec("wg", "show", "zl-prod-g")
			t.Fatalf("no nat_endpoint_changed for the candidate that works:\n%s", out)
		}
	}
	mustPing(t, "a", a.Ping, st[1].NodeIP)
	mustPing(t, "b", b.Ping, st[0].NodeIP)
	if p := a.Status().Peers[0]; p.Endpoint != refl[1] {
		t.Fatalf("peer endpoint %s, want %s", p.Endpoint, refl[1])
	}
}
