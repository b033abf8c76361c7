package firewall

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// isolationLab is lab (container, node, internet) plus what isolation is
// about:
//
//	peer (10.77.9.2) ─ veth "…o" in node (10.77.9.1): an overlay device
//	container "…k" (10.77.2.2/32) ─ veth "zltv…" in node: a container
//	  link (join_global), routed by a host route, in no bridge
//
// and the internet namespace routes 10.77.0.0/16 via the node, as any
// underlay neighbour can.
type isolationLab struct {
	lab
	peer        netNS
	overlay     string // node end of the peer's veth
	link        string // node end of the container link
	linkAddr    string
	bridgeAddr  string
	containerIP string
}

func newIsolationLab(t *testing.T) isolationLab {
	t.Helper()
	l := isolationLab{lab: newLab(t), linkAddr: "10.77.2.2", bridgeAddr: "10.77.1.1", containerIP: "10.77.1.2"}
	id := l.bridge[len("zltf") : len(l.bridge)-1]
	l.peer = newNetNS(t, "zltf-"+id+"-peer")
	l.overlay, l.link = "zltf"+id+"o", "zltv"+id
	run(t, "ip", "link", "add", l.overlay, "netns", l.node.name, "type", "veth", "peer", "name", "zltf"+id+"p", "netns", l.peer.name)
	run(t, "ip", "link", "add", l.link, "netns", l.node.name, "type", "veth", "peer", "name", "zltf"+id+"k", "netns", l.container.name)
	n, p, c := l.node, l.peer, l.container
	n.exec(t, "ip", "addr", "add", "10.77.9.1/24", "dev", l.overlay)
	n.exec(t, "ip", "link", "set", l.overlay, "up")
	n.exec(t, "ip", "link", "set", l.link, "up")
	n.exec(t, "ip", "route", "add", l.linkAddr+"/32", "dev", l.link)
	p.exec(t, "ip", "link", "set", "lo", "up")
	p.exec(t, "ip", "link", "set", "zltf"+id+"p", "up")
	p.exec(t, "ip", "addr", "add", "10.77.9.2/24", "dev", "zltf"+id+"p")
	p.exec(t, "ip", "route", "add", "10.77.0.0/16", "via", "10.77.9.1")
	c.exec(t, "ip", "addr", "add", l.linkAddr+"/32", "dev", "zltf"+id+"k")
	c.exec(t, "ip", "link", "set", "zltf"+id+"k", "up")
	l.internet.exec(t, "ip", "route", "add", "10.77.0.0/16", "via", "198.51.100.1")

	l.spec.OverlayIfaces = []string{l.overlay}
	l.spec.ContainerLinks = l.link
	return l
}

// rulePackets is the packet counter of our rule with that comment.
func rulePackets(t *testing.T, ns netNS, comment string) uint64 {
	t.Helper()
	st, err := ns.fw().Inspect("")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Chains {
		for _, r := range c.Rules {
			if r.Comment == comment {
				return r.Packets
			}
		}
	}
	t.Fatalf("no rule %q in %+v", comment, st)
	return 0
}

func TestIsolation(t *testing.T) {
	needRoot(t, "ping")
	l := newIsolationLab(t)
	reach := func(from netNS, dst string, want bool) {
		t.Helper()
		if got := pingOK(from, dst); got != want {
			t.Errorf("ping %s from %s: answered %v, want %v", dst, from.name, got, want)
		}
	}

	// Without isolation the underlay neighbour reaches the container on
	// its bridge and on its container link: what the test must prevent.
	open := l.spec
	open.Isolate = false
	l.apply(t, open)
	reach(l.internet, l.containerIP, true)
	reach(l.internet, l.linkAddr, true)

	spec := l.spec
	spec.Isolate = true
	l.apply(t, spec)
	reach(l.internet, l.containerIP, false)
	reach(l.internet, l.linkAddr, false)
	if rulePackets(t, l.node, "anything else into a bridge") == 0 || rulePackets(t, l.node, "anything else into a container link") == 0 {
		t.Error("the drop rules did not count the underlay's pings")
	}
	// The overlay reaches both; the container's own connections get their
	// replies from the underlay and from the overlay.
	reach(l.peer, l.containerIP, true)
	reach(l.peer, l.linkAddr, true)
	reach(l.container, "198.51.100.2", true)
	reach(l.container, "10.77.9.2", true)
	// The node itself reaches the container (output, not forward).
	reach(l.node, l.containerIP, true)

	// A dedicated device reaches only its own service's bridge, and no
	// container link (those carry global addresses).
	other := l.spec
	other.Isolate = true
	other.Bridges = append(other.Bridges, l.bridge+"x")
	other.Dedicated = []Dedicated{{Device: l.overlay, Bridge: l.bridge + "x"}}
	l.apply(t, other)
	reach(l.peer, l.containerIP, false)
	reach(l.peer, l.linkAddr, false)
	own := l.spec
	own.Isolate = true
	own.Dedicated = []Dedicated{{Device: l.overlay, Bridge: l.bridge}}
	l.apply(t, own)
	reach(l.peer, l.containerIP, true)
	reach(l.peer, l.linkAddr, false)
}

// The input chain keeps DNS queries from the underlay away from our
// listeners, over UDP and TCP, while containers and the overlay reach
// them; other ports of the same address stay open.
func TestDNSListenersClosedToTheUnderlay(t *testing.T) {
	needRoot(t)
	l := newIsolationLab(t)
	dnsAddr := netip.AddrPortFrom(netip.MustParseAddr(l.bridgeAddr), 5353)
	otherAddr := netip.AddrPortFrom(dnsAddr.Addr(), 5354)
	for _, a := range []netip.AddrPort{dnsAddr, otherAddr} {
		echoUDP(t, l.node, a)
		acceptTCP(t, l.node, a)
	}
	answers := func(from netNS, a netip.AddrPort, want bool) {
		t.Helper()
		if got := udpAnswered(t, from, a); got != want {
			t.Errorf("UDP to %s from %s: answered %v, want %v", a, from.name, got, want)
		}
		if got := tcpConnects(t, from, a); got != want {
			t.Errorf("TCP to %s from %s: connected %v, want %v", a, from.name, got, want)
		}
	}
	spec := l.spec
	spec.DNS = []netip.AddrPort{dnsAddr}
	l.apply(t, spec)
	answers(l.internet, dnsAddr, false)
	answers(l.internet, otherAddr, true)
	answers(l.container, dnsAddr, true)
	answers(l.peer, dnsAddr, true)
	if rulePackets(t, l.node, "DNS to our listeners from elsewhere (IPv4)") == 0 {
		t.Error("the DNS rule did not count the underlay's queries")
	}

	// Without the listener in the spec the same query gets through: the
	// rule above is what stopped it.
	spec.DNS = nil
	l.apply(t, spec)
	answers(l.internet, dnsAddr, true)
}

// echoUDP answers every datagram to a (in ns) with itself until the test ends.
func echoUDP(t *testing.T, ns netNS, a netip.AddrPort) {
	t.Helper()
	var pc *net.UDPConn
	if err := inNetNS(t, ns, func() (err error) {
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// acceptTCP accepts (and closes) connections to a (in ns) until the test ends.
func acceptTCP(t *testing.T, ns netNS, a netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(t, ns, func() (err error) {
		ln, err = net.Listen("tcp", a.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// udpAnswered reports whether a datagram from ns to a comes back.
func udpAnswered(t *testing.T, ns netNS, a netip.AddrPort) bool {
	t.Helper()
	var ok bool
	if err := inNetNS(t, ns, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(a))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("query")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		ok = err == nil && string(buf[:n]) == "query"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ok
}

// tcpConnects reports whether a connection from ns to a is accepted.
func tcpConnects(t *testing.T, ns netNS, a netip.AddrPort) bool {
	t.Helper()
	var ok bool
	if err := inNetNS(t, ns, func() error {
		c, err := net.DialTimeout("tcp", a.String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		ok = err == nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ok
}
