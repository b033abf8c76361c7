//go:build linux

package lab

import (
	"fmt"
	"net/netip"
)

// Router is a NAT router between the underlay ("the internet") and a LAN
// with nodes behind it. It masquerades the LAN and, following the recipe
// of machine.md, drops unsolicited NEW connections arriving on its WAN
// side: a dropped packet never confirms a conntrack entry, so two nodes
// punching holes towards each other meet on their original ports instead
// of being remapped.
type Router struct {
	lab    *Lab
	Name   string
	NS     string
	Public netip.Addr
	LAN    netip.Prefix
	gw     netip.Addr
	nodes  int
}

// RouterOptions change how a router maps its LAN.
type RouterOptions struct {
	// FullyRandom picks a random source port for every new mapping
	// (iptables' MASQUERADE --random-fully): an endpoint-dependent,
	// "symmetric" NAT, through which no hole can be punched because the
	// port a peer sees cannot be learned in advance.
	FullyRandom bool
}

// AddRouter puts a router on the underlay at host number n with a LAN
// bridge on lan (the router takes its first address).
func (l *Lab) AddRouter(name string, n int, lan netip.Prefix) *Router {
	l.t.Helper()
	return l.AddRouterWith(name, n, lan, RouterOptions{})
}

// AddRouterWith is AddRouter with options.
func (l *Lab) AddRouterWith(name string, n int, lan netip.Prefix, opts RouterOptions) *Router {
	l.t.Helper()
	r := &Router{lab: l, Name: name, NS: l.nsName(name), Public: l.underlayAddr(n).Addr(), LAN: lan.Masked(), gw: lan.Masked().Addr().Next()}
	l.addNS(r.NS)
	l.attachToSwitch(r.NS, "wan", l.underlayAddr(n), "r"+name)
	l.must("ip", "-n", r.NS, "link", "add", "lan", "type", "bridge")
	l.must("ip", "-n", r.NS, "addr", "add", netip.PrefixFrom(r.gw, lan.Bits()).String(), "dev", "lan")
	l.must("ip", "-n", r.NS, "link", "set", "lan", "up")
	l.must("ip", "netns", "exec", r.NS, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	nft := func(args ...string) { l.must(append([]string{"ip", "netns", "exec", r.NS, "nft"}, args...)...) }
	nft("add", "table", "ip", "labnat")
	nft("add", "chain", "ip", "labnat", "post", "{", "type", "nat", "hook", "postrouting", "priority", "100", ";", "}")
	masq := []string{"add", "rule", "ip", "labnat", "post", "oifname", "wan", "ip", "saddr", r.LAN.String(), "masquerade"}
	if opts.FullyRandom {
		masq = append(masq, "fully-random")
	}
	nft(masq...)
	nft("add", "chain", "ip", "labnat", "in", "{", "type", "filter", "hook", "input", "priority", "0", ";", "}")
	nft("add", "rule", "ip", "labnat", "in", "iifname", "wan", "ct", "state", "new", "drop")
	return r
}

// AddNodeBehind creates a node on the router's LAN (default route via the
// router) and starts its daemon.
func (l *Lab) AddNodeBehind(r *Router, name string, args ...string) *Node {
	l.t.Helper()
	r.nodes++
	addr := r.gw
	for range r.nodes {
		addr = addr.Next()
	}
	n := l.newNode(name, addr, args)
	a, b := l.linkName(fmt.Sprintf("%s%da", r.Name, r.nodes)), l.linkName(fmt.Sprintf("%s%db", r.Name, r.nodes))
	l.must("ip", "link", "add", a, "type", "veth", "peer", "name", b)
	l.must("ip", "link", "set", a, "netns", r.NS)
	l.must("ip", "link", "set", b, "netns", n.NS)
	l.must("ip", "-n", r.NS, "link", "set", a, "master", "lan", "up")
	l.must("ip", "-n", n.NS, "link", "set", b, "name", "eth0")
	l.must("ip", "-n", n.NS, "addr", "add", netip.PrefixFrom(addr, r.LAN.Bits()).String(), "dev", "eth0")
	l.must("ip", "-n", n.NS, "link", "set", "eth0", "up")
	l.must("ip", "-n", n.NS, "link", "set", "lo", "up")
	l.must("ip", "-n", n.NS, "route", "add", "default", "via", r.gw.String())
	l.register(n)
	return n
}
