//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// An outsider on the underlay that routes the cluster CIDR via node a (any
// L2 neighbour can) reaches neither node a's containers nor its DNS; node
// b, through the overlay, still reaches both. The echo requests are
// counted inside the container, so "unreachable" means the node dropped
// them, not that a reply went astray.
func TestUnderlayNeighbourIsIsolated(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (apt-get install dnsutils)")
	}
	l := newLab(t)
	nodes, st, web, cs := containerMesh(t, l)
	a, b := nodes[0], nodes[1]
	plain, joined := cs[0], cs[1] // node a: eth0 only; eth0 + join_global eth1
	out := l.AddOutsider("out", 100, a, netip.MustParsePrefix(cluster))
	a.Call(protocol.RegisterDNS{Name: "web", IP: plain.ip})

	// The lab works: the outsider reaches node a, node b and its
	// container reach node a's containers through the overlay, and the
	// echo counter sees those pings.
	mustPing(t, "the outsider", out.Ping, a.Underlay)
	for _, dst := range []placed{plain, joined} {
		before := inEchos(t, dst.c)
		mustPing(t, "node b", b.Ping, dst.ip)
		mustPing(t, cs[2].c.Name, cs[2].c.Ping, dst.ip)
		if after := inEchos(t, dst.c); after <= before {
			t.Fatalf("%s counted no echo requests from node b (%d, then %d)", dst.c.Name, before, after)
		}
	}
	mustPing(t, "node b", b.Ping, joined.gip)
	zone := "web.prod.local"
	if got := digShort(b.Exec, st[0].NodeIP.String(), 53, zone, "A"); got != plain.ip.String() {
		t.Fatalf("node b through the overlay: DNS answer %q, want %s", got, plain.ip)
	}
	if got := digShort(plain.c.Exec, web[0].Gateway.String(), 53, zone, "A"); got != plain.ip.String() {
		t.Fatalf("the container via its gateway: DNS answer %q, want %s", got, plain.ip)
	}

	// The outsider: no container address answers, and no echo request
	// arrives in either container.
	for _, dst := range []struct {
		c    *lab.Container
		addr netip.Addr
	}{{plain.c, plain.ip}, {joined.c, joined.ip}, {joined.c, joined.gip}} {
		before := inEchos(t, dst.c)
		if err := out.Ping(dst.addr, 3); err == nil {
			t.Errorf("the outsider pings %s (%s) through node a", dst.addr, dst.c.Name)
		}
		if after := inEchos(t, dst.c); after != before {
			t.Errorf("%d echo requests from the outsider arrived in %s at %s", after-before, dst.c.Name, dst.addr)
		}
	}
	// ... and no DNS server answers it, over UDP or TCP.
	noDNSAnswer(t, out, []netip.Addr{st[0].NodeIP, a.Underlay, web[0].Gateway}, zone)
}

// The DNS server's own check holds without our nftables table: the
// outsider still gets no answer, while a container does.
func TestUnderlayNeighbourGetsNoDNSWithoutFirewall(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (apt-get install dnsutils)")
	}
	l := newLab(t, "--firewall=false")
	a := l.AddNode("a")
	st := setupGlobal(t, []*lab.Node{a})
	web := a.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	c := l.AddContainer("c")
	att := a.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: true}).(protocol.Attached)
	a.Call(protocol.RegisterDNS{Name: "web", IP: att.IP})
	out := l.AddOutsider("out", 100, a, netip.MustParsePrefix(cluster))
	if got := a.MustExec("nft", "list", "ruleset"); strings.Contains(got, "zlayer_overlay") {
		t.Fatalf("--firewall=false installed our table:\n%s", got)
	}
	zone := "web.prod.local"
	for _, server := range []netip.Addr{web.Gateway, st[0].NodeIP} {
		if got := digShort(c.Exec, server.String(), 53, zone, "A"); got != att.IP.String() {
			t.Fatalf("the container via %s: DNS answer %q, want %s", server, got, att.IP)
		}
	}
	if err := out.Ping(st[0].NodeIP, 1); err != nil {
		t.Fatalf("without a firewall the outsider should reach the node IP (the DNS check is what is tested): %v", err)
	}
	noDNSAnswer(t, out, []netip.Addr{st[0].NodeIP, a.Underlay, web.Gateway}, zone)
}

// noDNSAnswer fails t if any server answers the host's query, over UDP or TCP.
func noDNSAnswer(t *testing.T, h *lab.Host, servers []netip.Addr, name string) {
	t.Helper()
	for _, server := range servers {
		for _, proto := range []string{"+notcp", "+tcp"} {
			got := dig(h.Exec, server.String(), 53, "+time=2", proto, name, "A")
			if strings.Contains(got, "status:") {
				t.Errorf("the outsider got a DNS answer from %s (%s):\n%s", server, proto, got)
			}
		}
	}
}

// inEchos is the number of ICMP echo requests the container's namespace
// has received (Icmp InEchos of /proc/net/snmp).
func inEchos(t *testing.T, c *lab.Container) uint64 {
	t.Helper()
	out, err := c.Exec("cat", "/proc/net/snmp")
	if err != nil {
		t.Fatalf("%s: reading /proc/net/snmp: %v\n%s", c.Name, err, out)
	}
	v, ok := snmpCounters(out, "Icmp")["InEchos"]
	if !ok {
		t.Fatalf("%s: no Icmp InEchos in /proc/net/snmp:\n%s", c.Name, out)
	}
	return v
}

// On one node, join_global is how a container reaches beyond its service
// (the reference's model): through its join_global link it reaches
// another service's containers; a container without one reaches its own
// bridge, not another service's bridge, nor any container's join_global
// address.
func TestServicesReachEachOtherOnlyThroughJoinGlobal(t *testing.T) {
	l := newLab(t)
	a := l.AddNode("a")
	setupGlobal(t, []*lab.Node{a})
	attach := func(service string, joined bool) placed {
		c := l.AddContainer(fmt.Sprintf("%s-%t", service, joined))
		att := a.Call(protocol.AttachContainer{Handle: c.Handle(), Service: service, JoinGlobal: joined}).(protocol.Attached)
		return placed{c: c, ip: att.IP, gip: att.GlobalIP}
	}
	for _, svc := range []string{"web", "api"} {
		a.Call(protocol.SetupServiceOverlay{Service: svc, Mode: "shared"})
	}
	webPlain, webJoined := attach("web", false), attach("web", true)
	apiPlain, apiJoined := attach("api", false), attach("api", true)

	for _, dst := range []netip.Addr{apiPlain.ip, apiJoined.ip, apiJoined.gip, webPlain.ip} {
		mustPing(t, "web's join_global container", webJoined.c.Ping, dst)
	}
	mustPing(t, "web's plain container", webPlain.c.Ping, webJoined.ip)
	for _, dst := range []struct {
		c    *lab.Container
		addr netip.Addr
	}{{apiPlain.c, apiPlain.ip}, {apiJoined.c, apiJoined.ip}, {apiJoined.c, apiJoined.gip}, {webJoined.c, webJoined.gip}} {
		before := inEchos(t, dst.c)
		if err := webPlain.c.Ping(dst.addr, 2); err == nil {
			t.Errorf("web's container without join_global pings %s (%s)", dst.addr, dst.c.Name)
		}
		if after := inEchos(t, dst.c); after != before {
			t.Errorf("%d echo requests from web's container without join_global arrived in %s at %s", after-before, dst.c.Name, dst.addr)
		}
	}
}

// Until the main daemon relies on our DNS its own server holds the node
// IP's DNS addresses. Our table closes those to the underlay as well: the
// outsider gets no answer from them, node b through the overlay does.
func TestUnderlayNeighbourGetsNoAnswerFromTheMainDaemonsDNS(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (apt-get install dnsutils)")
	}
	l := newLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	startMainDaemonDNS(t, a,
		netip.MustParseAddrPort("127.0.0.1:15353"),
		netip.AddrPortFrom(st[0].NodeIP, 15353),
		netip.AddrPortFrom(st[0].NodeIP, 53))
	out := l.AddOutsider("out", 100, a, netip.MustParsePrefix(cluster))
	mustPing(t, "node b", b.Ping, st[0].NodeIP)
	for _, port := range []int{53, 15353} {
		if got := digShort(b.Exec, st[0].NodeIP.String(), port, "web.prod.local", "A"); got != mainDaemonAnswer.String() {
			t.Fatalf("node b through the overlay, port %d: %q, want the main daemon's answer", port, got)
		}
		for _, proto := range []string{"+notcp", "+tcp"} {
			if got := dig(out.Exec, st[0].NodeIP.String(), port, "+time=2", proto, "web.prod.local", "A"); strings.Contains(got, "status:") {
				t.Errorf("the outsider got an answer from the main daemon's DNS on port %d (%s):\n%s", port, proto, got)
			}
		}
	}
}
