//go:build linux

package chaos

import (
	"slices"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Regression tests, against real namespaces, for bugs the suites of this
// package found.

// A Linux bridge whose address nobody chose takes the lowest address of its
// ports and changes it when that port leaves. The containers still on the
// bridge keep the old address of their gateway in their neighbour caches,
// and their frames to it go nowhere until the entry goes stale (30 s and
// more). Detaching one container must not cut its siblings off.
func TestDetachingAContainerKeepsItsSiblingsGateway(t *testing.T) {
	if err := lab.Check(); err != nil {
		t.Skip("lab: " + err.Error())
	}
	l := lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
	n := l.AddNode("a", "--dns-port", "0")
	n.Call(protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "1", ClusterCIDR: clusterCIDR, SliceCIDR: "10.77.1.0/24", WGPort: wgPort})
	svc := n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeShared}).(protocol.ServiceOverlay)
	var ctrs []*lab.Container
	for _, name := range []string{"c1", "c2", "c3"} {
		c := l.AddContainer(name)
		n.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web"})
		if err := c.Ping(svc.Gateway, 1); err != nil {
			t.Fatal(err)
		}
		ctrs = append(ctrs, c)
	}
	mac := func(name string) string {
		ls, err := links(n.Exec)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if l.Name == name {
				return l.Address
			}
		}
		t.Fatalf("no link %s", name)
		return ""
	}
	// Detach the container whose host end has the lowest address: the one
	// an unpinned bridge takes its own address from.
	victim := 0
	for i, c := range ctrs {
		if strings.Compare(mac(hostLink(c)), mac(hostLink(ctrs[victim]))) < 0 {
			victim = i
		}
	}
	before := mac(svc.Name)
	n.Call(protocol.DetachContainer{Handle: ctrs[victim].Handle()})
	lab.Eventually(t, 5e9, "the detached veth is gone", func() error {
		ls, _ := links(n.Exec)
		for _, l := range ls {
			if l.Name == hostLink(ctrs[victim]) {
				return errStill
			}
		}
		return nil
	})
	if after := mac(svc.Name); after != before {
		t.Errorf("the bridge changed its address from %s to %s when a port left", before, after)
	}
	for i, c := range ctrs {
		if i == victim {
			continue
		}
		if err := c.Ping(svc.Gateway, 2); err != nil {
			t.Errorf("container %s lost its gateway when a sibling was detached: %v", c.Name, err)
		}
	}
}

func hostLink(c *lab.Container) string { return vethOf(c.PID, 0) }

// WireGuard gives an allowed IP to one peer: the last one that claims it.
// The daemon must remember it that way, or a restart (which configures the
// peers in key order) hands the prefix back to whichever peer sorts last,
// and the traffic for it silently goes to another node.
func TestAClaimedAllowedIPStaysWithItsPeerAcrossARestart(t *testing.T) {
	if err := lab.Check(); err != nil {
		t.Skip("lab: " + err.Error())
	}
	l := lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
	n := l.AddNode("a", "--dns-port", "0")
	n.Call(protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "1", ClusterCIDR: clusterCIDR, SliceCIDR: "10.77.1.0/24", WGPort: wgPort})
	// first sorts after second, so a restart in key order would favour it.
	var first, second string
	for first <= second {
		first, _ = keyFor("")
		second, _ = keyFor("")
	}
	peer := func(pub, allowed string) protocol.AddPeer {
		return protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "172.31.0.200:51820", AllowedIPs: allowed}}
	}
	n.Call(peer(first, "10.99.1.0/24,10.99.2.0/24"))
	n.Call(peer(second, "10.99.1.0/24"))
	n.Call(protocol.AddAllowedIP{Pubkey: second, CIDR: "10.99.2.0/24"})
	want := map[string][]string{first: nil, second: {"10.99.1.0/24", "10.99.2.0/24"}}
	check := func(when string) {
		t.Helper()
		dev, err := wgDump(n.Exec, globalIface)
		if err != nil {
			t.Fatal(err)
		}
		for pub, ips := range want {
			if got := dev.Peers[pub].AllowedIPs; !slices.Equal(got, ips) {
				t.Errorf("%s: WireGuard gives peer %.8s… %v, want %v", when, pub, got, ips)
			}
		}
		for _, p := range n.Status().Peers {
			if got := splitNonEmpty(p.AllowedIPs); !slices.Equal(got, want[p.PublicKey]) {
				t.Errorf("%s: status gives peer %.8s… %v, want %v", when, p.PublicKey, got, want[p.PublicKey])
			}
		}
	}
	check("before the restart")
	n.Restart()
	check("after the restart")
}

func splitNonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	out := strings.Split(s, ",")
	slices.Sort(out)
	return out
}

// A join_global container keeps its links across teardown_global_overlay
// and setup_global_overlay, but the kernel drops its host route with the
// node IP. The node (and through it the overlay) must reach the container
// again as soon as the global overlay is back.
func TestAContainerIsReachableRightAfterTheGlobalOverlayReturns(t *testing.T) {
	if err := lab.Check(); err != nil {
		t.Skip("lab: " + err.Error())
	}
	l := lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
	n := l.AddNode("a", "--dns-port", "0")
	global := protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "1", ClusterCIDR: clusterCIDR, SliceCIDR: "10.77.1.0/24", WGPort: wgPort}
	n.Call(global)
	n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeShared})
	c := l.AddContainer("c1")
	a := n.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: true}).(protocol.Attached)
	if err := n.Ping(a.GlobalIP, 1); err != nil {
		t.Fatal(err)
	}
	n.Call(protocol.TeardownGlobalOverlay{})
	n.Call(global)
	if err := n.Ping(a.GlobalIP, 1); err != nil {
		t.Fatalf("the node cannot reach the container's eth1 once the global overlay is back: %v\n%s", err, n.MustExec("ip", "route"))
	}
}
