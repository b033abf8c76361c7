//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// The containers, DNS and restart suite in an IPv4-only, an IPv6-only and
// a dual-stack cluster. The IPv6-only and dual-stack clusters run over an
// underlay that has only IPv6: peers' endpoints are [fd99::N]:51820.

type clusterFamilies struct {
	name     string
	underlay string
	cluster  string
	slice    func(i int) string // node i's slice (one prefix per family)
}

var familyCases = []clusterFamilies{
	{"ipv4", "172.31.0.0/24", "10.200.0.0/16", func(i int) string { return fmt.Sprintf("10.200.%d.0/24", i+1) }},
	{"ipv6", "fd99::/64", "fd00:200::/56", func(i int) string { return fmt.Sprintf("fd00:200:0:%d::/64", i+1) }},
	{"dual", "fd99::/64", "10.200.0.0/16,fd00:200::/56", func(i int) string {
		return fmt.Sprintf("10.200.%d.0/24,fd00:200:0:%d::/64", i+1, i+1)
	}},
}

func newLabOn(t *testing.T, underlay string) *lab.Lab {
	t.Helper()
	if err := lab.Check(); err != nil {
		t.Skip("end-to-end tests: " + err.Error())
	}
	for _, bin := range []string{"ping", "wg", "dig"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("end-to-end tests need %s", bin)
		}
	}
	return lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd"), Underlay: netip.MustParsePrefix(underlay),
		DaemonArgs: []string{"--reconcile-interval", "2s", "--health-interval", "1s"}})
}

func TestClusterFamilies(t *testing.T) {
	for _, fc := range familyCases {
		t.Run(fc.name, func(t *testing.T) { testFamilies(t, fc) })
	}
}

// familyNode is one node of the suite: its status and its container.
type familyNode struct {
	n   *lab.Node
	st  protocol.StatusSnapshot
	c   *lab.Container
	ips []netip.Addr // the container's address in each family
	gw  []netip.Addr // its gateways
}

func testFamilies(t *testing.T, fc clusterFamilies) {
	l := newLabOn(t, fc.underlay)
	nodes := []*familyNode{{n: l.AddNode("a")}, {n: l.AddNode("b")}}
	for i, fn := range nodes {
		fn.n.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: fn.n.Name, ClusterCIDR: fc.cluster, SliceCIDR: fc.slice(i), WGPort: 51820})
		fn.st = fn.n.Status()
		if want := strings.Count(fc.cluster, ",") + 1; want == 2 && len(fn.st.NodeIPs) != 2 {
			t.Fatalf("node %s: node_ips %v, want one per family", fn.n.Name, fn.st.NodeIPs)
		}
	}
	for i, fn := range nodes {
		other := nodes[1-i]
		fn.n.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey:               other.st.PublicKey,
			Endpoint:                netip.AddrPortFrom(other.n.Underlay, 51820).String(),
			AllowedIPs:              fc.slice(1 - i),
			PersistentKeepaliveSecs: 25,
		}})
	}
	if out := nodes[0].n.MustExec("wg", "show", "zl-prod-g", "endpoints"); fc.underlay == "fd99::/64" && !strings.Contains(out, "[fd99::") {
		t.Fatalf("endpoints are not on the IPv6 underlay:\n%s", out)
	}
	for i, fn := range nodes {
		for _, ip := range nodeIPs(nodes[1-i].st) {
			mustPing(t, fn.n.Name, fn.n.Ping, ip)
		}
	}
	// A container on each node, in every family of the cluster.
	for _, fn := range nodes {
		svc := fn.n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeShared}).(protocol.ServiceOverlay)
		fn.gw = []netip.Addr{svc.Gateway}
		if len(svc.Gateways) > 0 {
			fn.gw = svc.Gateways
		}
		fn.c = l.AddContainer("c" + fn.n.Name)
		att := fn.n.Call(protocol.AttachContainer{Handle: fn.c.Handle(), Service: "web"}).(protocol.Attached)
		fn.ips = []netip.Addr{att.IP}
		if len(att.IPs) > 0 {
			fn.ips = att.IPs
		}
	}
	crossPings := func(when string) {
		t.Helper()
		for i, fn := range nodes {
			for _, ip := range nodes[1-i].ips {
				mustPing(t, when+" "+fn.c.Name, fn.c.Ping, ip)
			}
		}
	}
	crossPings("")
	// DNS: a name for each container address, answered (A and AAAA) from
	// the bridge gateway of each family.
	a := nodes[0]
	for _, ip := range a.ips {
		a.n.Call(protocol.RegisterDNS{Name: "web", IP: ip})
	}
	for _, gw := range a.gw {
		for _, ip := range a.ips {
			qtype := "A"
			if ip.Is6() {
				qtype = "AAAA"
			}
			if got := digShort(a.c.Exec, gw.String(), 53, "web.prod.local", qtype); got != ip.String() {
				t.Fatalf("%s web.prod.local from %s: %q, want %s", qtype, gw, got, ip)
			}
		}
	}
	// A crash of one daemon: every family still crosses.
	a.n.Kill()
	a.n.Start()
	crossPings("after a restart")
	if s := a.n.Status(); fmt.Sprint(nodeIPs(s)) != fmt.Sprint(nodeIPs(a.st)) {
		t.Fatalf("node IPs after the restart %v, before %v", nodeIPs(s), nodeIPs(a.st))
	}
}

func nodeIPs(s protocol.StatusSnapshot) []netip.Addr {
	if len(s.NodeIPs) > 0 {
		return s.NodeIPs
	}
	return []netip.Addr{s.NodeIP}
}
