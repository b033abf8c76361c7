package dns

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Interfaces names the interfaces a Server answers queries from, besides
// loopback, which it always answers. The decision is made on the
// interface a query arrived on, never on its source address alone: a
// neighbour on the underlay can send a packet with any source, but not
// make it arrive on a bridge or an overlay device.
//
// The zero value answers loopback only.
type Interfaces struct {
	// Names are interfaces by exact name: bridges, overlay devices.
	Names []string
	// Prefixes match interfaces by the start of their name: containers'
	// join_global links ("zl-v"), which come and go with every attach.
	Prefixes []string
}

// ifacePolicy is an Interfaces ready for lookups. Servers swap it whole
// and verdict caches remember which one they were computed under.
type ifacePolicy struct {
	names    map[string]struct{}
	prefixes []string
}

func newIfacePolicy(in Interfaces) (*ifacePolicy, error) {
	p := &ifacePolicy{names: make(map[string]struct{}, len(in.Names))}
	for _, n := range in.Names {
		if n == "" || len(n) > 15 || strings.ContainsAny(n, "/: \t\n\x00") {
			return nil, fmt.Errorf("dns: %q is not an interface name", n)
		}
		p.names[n] = struct{}{}
	}
	for _, pre := range in.Prefixes {
		if pre == "" {
			return nil, fmt.Errorf("dns: an empty interface name prefix would match every interface; list the interfaces instead")
		}
		if !slices.Contains(p.prefixes, pre) {
			p.prefixes = append(p.prefixes, pre)
		}
	}
	return p, nil
}

func (p *ifacePolicy) allows(name string, loopback bool) bool {
	if loopback {
		return true
	}
	if _, ok := p.names[name]; ok {
		return true
	}
	for _, pre := range p.prefixes {
		if strings.HasPrefix(name, pre) {
			return true
		}
	}
	return false
}

// SetInterfaces replaces the interfaces queries are answered from (see
// Interfaces). It applies to queries read after it returns, on every
// listener.
func (s *Server) SetInterfaces(in Interfaces) error {
	p, err := newIfacePolicy(in)
	if err != nil {
		return err
	}
	s.ifaces.Store(p)
	return nil
}

// maxVerdicts bounds a listener's cache of interface verdicts; past it the
// cache starts afresh (indexes of deleted container links pile up).
const maxVerdicts = 4096

// verdicts are the cached decisions of one listener, valid while the
// server's policy is the one they were made under.
type verdicts struct {
	policy *ifacePolicy
	allow  map[int32]bool
}

// arrival decides for one listener whether a query that arrived on an
// interface (by index) is answered. Naming an interface is a system call
// in the listener's network namespace, so verdicts are cached per index:
// the query path does two atomic loads and a map lookup, and allocates
// nothing.
type arrival struct {
	s *Server
	// ifname names an interface of the listener's namespace.
	ifname func(ifindex int32) (name string, loopback bool, err error)
	// route is the interface through which the listener's namespace
	// reaches an address: how a TCP client, which completed a handshake
	// from that address, is placed.
	route func(netip.Addr) (int32, error)
	// close releases what route opened; nil when nothing.
	close func()

	cache atomic.Pointer[verdicts]
	mu    sync.Mutex // serialises cache misses
}

func (a *arrival) stop() {
	if a.close != nil {
		a.close()
	}
}

// allowed reports whether a query that arrived on ifindex may be answered.
func (a *arrival) allowed(ifindex int32) bool {
	p := a.s.ifaces.Load()
	if c := a.cache.Load(); c != nil && c.policy == p {
		if v, ok := c.allow[ifindex]; ok {
			return v
		}
	}
	return a.decide(p, ifindex)
}

func (a *arrival) decide(p *ifacePolicy, ifindex int32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.cache.Load()
	if old != nil && old.policy == p {
		if v, ok := old.allow[ifindex]; ok {
			return v
		}
	}
	if ifindex <= 0 {
		return false // no arrival information: never answered
	}
	name, loopback, err := a.ifname(ifindex)
	if err != nil {
		// Gone already, or the socket is closing: refuse, and ask again
		// next time rather than remember a verdict made without a name.
		return false
	}
	v := p.allows(name, loopback)
	next := &verdicts{policy: p, allow: map[int32]bool{}}
	if old != nil && old.policy == p && len(old.allow) < maxVerdicts {
		next.allow = make(map[int32]bool, len(old.allow)+1)
		for k, ov := range old.allow {
			next.allow[k] = ov
		}
	}
	next.allow[ifindex] = v
	a.cache.Store(next)
	return v
}

// allowedConn reports whether a TCP connection may be served: the
// interface its client is reached through must be one queries are
// answered from. A client that completed the handshake receives at its
// address, so it cannot spoof one routed elsewhere.
func (a *arrival) allowedConn(c net.Conn) bool {
	if a.route == nil {
		return true // the platform cannot tell (see arrivalKnown)
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return false
	}
	idx, err := a.route(ta.AddrPort().Addr().Unmap())
	if err != nil {
		return false
	}
	return a.allowed(idx)
}

// arrivalListener hands miekg/dns's TCP server only the connections
// arrival allows; the others are closed unread.
type arrivalListener struct {
	net.Listener
	a *arrival
}

func (l arrivalListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.a.allowedConn(c) {
			return c, nil
		}
		l.a.s.stats.wrongInterface.Add(1)
		c.Close()
	}
}
