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

type placed struct {
	c    *lab.Container
	node int
	ip   netip.Addr
	gip  netip.Addr
}

// containerMesh: two nodes, service web on both, two containers on each
// (the second of each with join_global). Peers carry each node's slice and
// web subnet as allowed IPs.
func containerMesh(t *testing.T, l *lab.Lab) ([]*lab.Node, []protocol.StatusSnapshot, []protocol.ServiceOverlay, []placed) {
	t.Helper()
	nodes := []*lab.Node{l.AddNode("a"), l.AddNode("b")}
	st := setupGlobal(t, nodes)
	web := make([]protocol.ServiceOverlay, len(nodes))
	for i, n := range nodes {
		web[i] = n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	}
	meshPeers(t, nodes, st, func(j int) []string { return []string{web[j].Subnet} })
	var cs []placed
	for i, n := range nodes {
		for k := range 2 {
			c := l.AddContainer(fmt.Sprintf("%s-c%d", n.Name, k))
			att := n.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: k == 1}).(protocol.Attached)
			cs = append(cs, placed{c: c, node: i, ip: att.IP, gip: att.GlobalIP})
		}
	}
	return nodes, st, web, cs
}

func TestContainersAcrossNodes(t *testing.T) {
	l := newLab(t)
	nodes, st, web, cs := containerMesh(t, l)
	for _, p := range cs {
		if !netip.MustParsePrefix(web[p.node].Subnet).Contains(p.ip) {
			t.Fatalf("%s got %s outside %s", p.c.Name, p.ip, web[p.node].Subnet)
		}
		// Inside: eth0 with the address, MTU aligned with the overlay, lo up.
		out, err := p.c.Exec("ip", "-o", "link", "show", "eth0")
		if err != nil || !strings.Contains(out, "mtu 1420") {
			t.Fatalf("%s eth0: %v %s", p.c.Name, err, out)
		}
		if out, _ := p.c.Exec("ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
			t.Fatalf("%s lo not up: %s", p.c.Name, out)
		}
	}
	for _, from := range cs {
		for _, to := range cs {
			if from.c != to.c {
				mustPing(t, from.c.Name, from.c.Ping, to.ip)
			}
		}
	}
	// join_global: the container reaches the other node's overlay IP.
	for _, p := range cs {
		if p.gip.IsValid() {
			mustPing(t, p.c.Name, p.c.Ping, st[1-p.node].NodeIP)
			if got, _ := p.c.Addr("eth1"); got != p.gip {
				t.Fatalf("%s eth1 has %s, want %s", p.c.Name, got, p.gip)
			}
		}
	}
	// status lists them.
	for i, n := range nodes {
		if got := len(n.Status().Attachments); got != 2 {
			t.Fatalf("node %d status lists %d attachments", i, got)
		}
	}
}

func TestDeadContainerIsReleasedByReconcile(t *testing.T) {
	l := newLab(t)
	n := l.AddNode("a")
	setupGlobal(t, []*lab.Node{n})
	n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	c := l.AddContainer("c")
	att := n.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: true}).(protocol.Attached)
	host := fmt.Sprintf("zl-v%d-e0", c.PID)
	n.MustExec("ip", "link", "show", host)
	c.Kill()
	// The namespace went with the process, taking the veths; within one
	// reconcile period (2 s in the lab) the address is free again.
	lab.Eventually(t, 10*time.Second, "dead container released", func() error {
		s := n.Status()
		if len(s.Attachments) != 0 {
			return fmt.Errorf("still attached: %+v", s.Attachments)
		}
		if s.Services[0].Used != 1 || s.SlicePool.Used != 1 {
			return fmt.Errorf("addresses still held: %+v %+v", s.Services[0], s.SlicePool)
		}
		return nil
	})
	if _, err := n.Exec("ip", "link", "show", host); err == nil {
		t.Fatalf("%s still exists", host)
	}
	// The address is handed out again.
	c2 := l.AddContainer("c2")
	if got := n.Call(protocol.AttachContainer{Handle: c2.Handle(), Service: "web"}).(protocol.Attached).IP; got != att.IP {
		t.Fatalf("freed address %s not reused (got %s)", att.IP, got)
	}
}

func TestAttachDetach200(t *testing.T) {
	l := newLab(t)
	n := l.AddNode("a")
	setupGlobal(t, []*lab.Node{n})
	n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.201.0.0/23"})
	var cs []*lab.Container
	for i := range 200 {
		c := l.AddContainer(fmt.Sprintf("c%d", i))
		cs = append(cs, c)
		n.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: i%2 == 0})
	}
	if got := strings.Count(n.MustExec("ip", "-o", "link", "show", "type", "veth"), "zl-v"); got != 300 {
		t.Fatalf("%d veths for 200 containers (100 with join_global)", got)
	}
	for _, c := range cs {
		n.Call(protocol.DetachContainer{Handle: c.Handle()})
	}
	lab.Eventually(t, 30*time.Second, "everything detached", func() error {
		if out := n.MustExec("ip", "-o", "link", "show", "type", "veth"); strings.Contains(out, "zl-v") {
			return fmt.Errorf("veths left:\n%s", out)
		}
		if out := n.MustExec("ip", "route", "show", "proto", "boot"); strings.Contains(out, "zl-v") {
			return fmt.Errorf("host routes left:\n%s", out)
		}
		s := n.Status()
		if len(s.Attachments) != 0 || s.Services[0].Used != 1 || s.SlicePool.Used != 1 {
			return fmt.Errorf("state left: %d attachments, %+v, %+v", len(s.Attachments), s.Services[0], s.SlicePool)
		}
		return nil
	})
}

// SIGKILL the daemon with containers attached: after the restart they keep
// their addresses and connectivity, status shows them, nothing doubles.
func TestContainersSurviveDaemonCrash(t *testing.T) {
	l := newLab(t)
	nodes, _, _, cs := containerMesh(t, l)
	a := nodes[0]
	before := a.Status()
	linksBefore := a.MustExec("ip", "-o", "link", "show")
	a.Kill()
	// The data plane keeps working while the daemon is down: bridges,
	// veths and routes are kernel objects.
	mustPing(t, cs[0].c.Name, cs[0].c.Ping, cs[1].ip)
	a.Start()
	for _, from := range cs {
		for _, to := range cs {
			if from.c != to.c {
				mustPing(t, from.c.Name, from.c.Ping, to.ip)
			}
		}
	}
	after := a.Status()
	if fmt.Sprint(before.Attachments) != fmt.Sprint(after.Attachments) || fmt.Sprint(before.Services) != fmt.Sprint(after.Services) {
		t.Fatalf("restart changed state:\nbefore %+v %+v\nafter  %+v %+v", before.Attachments, before.Services, after.Attachments, after.Services)
	}
	linksAfter := a.MustExec("ip", "-o", "link", "show")
	if strings.Count(linksAfter, "zl-") != strings.Count(linksBefore, "zl-") {
		t.Fatalf("links changed across the restart:\n%s\n---\n%s", linksBefore, linksAfter)
	}
}

// Guests: an address from the node slice, a keypair, the guest registered
// as a global peer; detach removes both.
func TestGuestAttach(t *testing.T) {
	l := newLab(t)
	n := l.AddNode("a")
	st := setupGlobal(t, []*lab.Node{n})
	gc := n.Call(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web", JoinGlobal: true}).(protocol.GuestConfig)
	if !netip.MustParsePrefix(sliceOf(0)).Contains(gc.OverlayIP) || gc.Peers[0].PublicKey != st[0].PublicKey || gc.Peers[0].AllowedIPs != cluster {
		t.Fatalf("guest config %+v", gc)
	}
	out := n.MustExec("wg", "show", "zl-prod-g", "allowed-ips")
	if !strings.Contains(out, gc.PublicKey) || !strings.Contains(out, gc.OverlayIP.String()+"/32") {
		t.Fatalf("guest not a peer:\n%s", out)
	}
	n.Call(protocol.DetachContainer{Handle: protocol.GuestManaged("vm-1")})
	if out := n.MustExec("wg", "show", "zl-prod-g", "peers"); strings.TrimSpace(out) != "" {
		t.Fatalf("guest peer left: %s", out)
	}
}
