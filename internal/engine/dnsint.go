package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// DNSConfig wires the embedded DNS server into the engine.
type DNSConfig struct {
	Server *dns.Server
	// Zone, when set (--dns-zone), is the cluster zone; otherwise it is
	// "<deployment>.local", or the dns_domain the main daemon sends.
	Zone string
	// LoopbackPort is the port of our always-on 127.0.0.1 listener
	// (--dns-port, default 15354: one above the main daemon's); 0 disables
	// it.
	LoopbackPort uint16
	// OverlayPort is the port on the bridge gateways (53: what containers'
	// resolv.conf points at), and on the node IP when we serve it.
	OverlayPort uint16
	// MainPort is the ZLayer main daemon's DNS port (its dns_port, default
	// 15353). Its DNS server binds 127.0.0.1:MainPort, <node_ip>:MainPort
	// and <node_ip>:OverlayPort after setup_global_overlay, so we leave
	// those three to it unless NodeListeners says otherwise.
	MainPort uint16
	// NodeListeners decides whether we bind the main daemon's three
	// addresses: NodeListenersAuto (once the main daemon relies on our DNS:
	// register_dns, or hello with the "dns" feature), NodeListenersOn
	// (always) or NodeListenersOff (never).
	NodeListeners string
}

// Values of DNSConfig.NodeListeners (--dns-node-listeners).
const (
	NodeListenersAuto = "auto"
	NodeListenersOn   = "on"
	NodeListenersOff  = "off"
)

// dnsState is the engine's side of DNS.
type dnsState struct {
	cfg DNSConfig
	// allowed are the source ranges recursion is allowed for, swapped
	// atomically so the query path never takes a lock.
	allowed atomic.Pointer[[]netip.Prefix]
	// lastErr is the last listener error, for status.
	lastErr atomic.Pointer[string]
	// domain is a dns_domain the main daemon sent, used as the zone when
	// no --dns-zone was given.
	domain atomic.Pointer[string]
	// applyMu makes deriving the DNS configuration from the topology and
	// applying it one step: two changes at once can then never apply the
	// older picture last.
	applyMu sync.Mutex
}

// AllowRecursion is the policy for dns.Config: loopback, this node's
// addresses, the cluster and every local subnet — never the world. It is
// consulted only for queries the server answers at all, which arrived on
// loopback, a bridge, an overlay device or a container link (see
// updateDNS): a source address alone, which anyone can forge, never earns
// recursion.
func (d *dnsState) AllowRecursion(src netip.Addr) bool {
	src = src.Unmap()
	if src.IsLoopback() {
		return true
	}
	if p := d.allowed.Load(); p != nil {
		for _, pf := range *p {
			if pf.Contains(src) {
				return true
			}
		}
	}
	return false
}

// NewDNSPolicy returns the recursion policy to hand to dns.New before the
// engine exists; pass the same value in Config.DNS.Policy.
func NewDNSPolicy() *DNSPolicy { return &DNSPolicy{} }

// DNSPolicy is the recursion policy shared by the DNS server and the
// engine, which keeps its ranges current.
type DNSPolicy struct{ dnsState }

// enableDNS installs the DNS hooks and loads the stored records.
func (e *Engine) enableDNS(cfg DNSConfig, policy *DNSPolicy) error {
	if policy == nil {
		policy = NewDNSPolicy()
	}
	if cfg.MainPort == 0 {
		cfg.MainPort = dns.MainDaemonPort
	}
	switch cfg.NodeListeners {
	case "":
		cfg.NodeListeners = NodeListenersAuto
	case NodeListenersAuto, NodeListenersOn, NodeListenersOff:
	default:
		return fmt.Errorf("DNS node listeners %q: want %s, %s or %s", cfg.NodeListeners, NodeListenersAuto, NodeListenersOn, NodeListenersOff)
	}
	policy.cfg = cfg
	e.dns = &policy.dnsState
	records := map[string][]netip.Addr{}
	e.locked(func() {
		for name, r := range e.st.dns {
			for _, a := range r.Addrs {
				if ip, err := netip.ParseAddr(a); err == nil {
					records[name] = append(records[name], ip)
				}
			}
		}
	})
	e.updateDNSZone()
	if err := cfg.Server.Replace(records); err != nil {
		return fmt.Errorf("restore DNS records: %w", err)
	}
	e.hooks.topology = append(e.hooks.topology, e.updateDNS)
	e.hooks.dnsFor = e.dnsFor
	e.hooks.statusExtra = append(e.hooks.statusExtra, e.dnsStatus)
	return nil
}

// zoneFor is the zone the cluster's names live in.
func (e *Engine) zoneName() string {
	if e.dns.cfg.Zone != "" {
		return e.dns.cfg.Zone
	}
	if d := e.dns.domain.Load(); d != nil && *d != "" {
		return *d
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if g := e.st.global; g != nil {
		return g.rec.Deployment + ".local"
	}
	return "zlayer.local"
}

// updateDNSZone applies zoneName to the server. Its callers race: a
// topology change (updateDNS) can derive the zone, then an attach stores a
// new dns_domain and applies it (noteDNSDomain), then the first applies its
// older zone last; later attaches with the same dns_domain change nothing,
// so the stale zone would stay until some topology change. Deriving again
// after each change until the server agrees leaves the current zone applied
// by whoever finishes last, without making attaches wait on each other.
func (e *Engine) updateDNSZone() {
	srv := e.dns.cfg.Server
	for {
		zone := e.zoneName()
		e.at("dns.zone")
		applied := srv.Zone()
		if strings.TrimSuffix(applied, ".") == strings.ToLower(strings.TrimSuffix(zone, ".")) {
			return
		}
		if err := srv.SetZone(zone); err != nil {
			// Nothing changed: trying again would fail the same way.
			e.log.Warn("cannot use DNS zone", "zone", zone, "err", err)
			return
		}
		if srv.Zone() == applied {
			// The server took it for the zone it has: the two differ
			// only in a form the comparison above does not know, and
			// looping would never end.
			return
		}
		e.log.Info("DNS zone", "zone", zone)
	}
}

// dnsPlan is what the DNS server should do for the current topology.
type dnsPlan struct {
	listen  []netip.AddrPort // sorted, no duplicates
	allowed []netip.Prefix   // sources recursion is allowed for
	reverse []netip.Prefix   // reverse zones we answer
	ifaces  dns.Interfaces   // where queries may arrive
}

// planDNS derives the DNS server's configuration from the desired state:
// our loopback port and every bridge gateway always; the main daemon's
// addresses only when we serve them (servesNodeDNSLocked); recursion for
// the cluster and the local subnets; reverse zones for them.
func (e *Engine) planDNS() dnsPlan {
	cfg := e.dns.cfg
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	var p dnsPlan
	if cfg.LoopbackPort != 0 {
		p.listen = append(p.listen, netip.AddrPortFrom(lo, cfg.LoopbackPort))
	}
	e.locked(func() { e.planDNSLocked(&p) })
	slices.SortFunc(p.listen, func(a, b netip.AddrPort) int { return a.Compare(b) })
	p.listen = slices.Compact(p.listen)
	return p
}

func (e *Engine) planDNSLocked(p *dnsPlan) {
	cfg := e.dns.cfg
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	// Queries are answered only when they arrive on loopback (always), an
	// overlay device, a bridge or a container's join_global link
	// (vethName(pid, 1), "zl-v<pid>-e1"): never from the underlay, whatever
	// source address a packet claims.
	p.ifaces = dns.Interfaces{Prefixes: []string{"zl-v"}}
	if g := e.st.global; g != nil {
		p.ifaces.Names = append(p.ifaces.Names, g.rec.Interface)
	}
	for _, svc := range e.st.services {
		if svc.rec.Bridge != "" {
			p.ifaces.Names = append(p.ifaces.Names, svc.rec.Bridge)
		}
		if svc.dedicated() && svc.rec.Interface != "" {
			p.ifaces.Names = append(p.ifaces.Names, svc.rec.Interface)
		}
	}
	if g := e.st.global; g != nil && e.servesNodeDNSLocked() {
		p.listen = append(p.listen, netip.AddrPortFrom(lo, cfg.MainPort))
		for _, ip := range []netip.Addr{g.nodeIP, g.nodeIP2} {
			if ip.IsValid() {
				p.listen = append(p.listen, netip.AddrPortFrom(ip, cfg.MainPort), netip.AddrPortFrom(ip, cfg.OverlayPort))
			}
		}
	}
	clusters := []netip.Prefix{}
	if e.st.cluster.IsValid() {
		clusters = e.st.clusters()
		p.allowed = append(p.allowed, clusters...)
		p.reverse = append(p.reverse, clusters...)
		p.allowed = append(p.allowed, e.st.slices()...)
	}
	inCluster := func(a netip.Addr) bool {
		return slices.ContainsFunc(clusters, func(c netip.Prefix) bool { return c.Contains(a) })
	}
	for _, svc := range e.st.services {
		for _, r := range svc.allRanges() {
			p.listen = append(p.listen, netip.AddrPortFrom(r.gateway, cfg.OverlayPort))
			p.allowed = append(p.allowed, r.subnet)
			if !inCluster(r.subnet.Addr()) {
				p.reverse = append(p.reverse, r.subnet)
			}
		}
	}
}

// updateDNS brings the DNS server to the current topology. A listener that
// cannot bind (its port is taken) is reported in status and the log and
// retried by reconcile; the others serve regardless.
func (e *Engine) updateDNS() {
	e.dns.applyMu.Lock()
	defer e.dns.applyMu.Unlock()
	e.updateDNSZone()
	p := e.planDNS()
	e.at("dns.plan")
	srv := e.dns.cfg.Server
	e.dns.allowed.Store(&p.allowed)
	// Interfaces before listeners, so a new listener serves under the new
	// policy.
	if err := srv.SetInterfaces(p.ifaces); err != nil {
		e.log.Warn("DNS interfaces", "err", err)
	}
	if err := srv.SetReversePrefixes(p.reverse); err != nil {
		e.log.Warn("DNS reverse zones", "err", err)
	}
	if err := srv.SetListeners(p.listen); err != nil {
		msg := err.Error()
		e.dns.lastErr.Store(&msg)
		e.log.Warn("DNS listeners", "err", err)
	} else {
		e.dns.lastErr.Store(nil)
	}
}

// servesNodeDNSLocked reports whether we bind the main daemon's DNS
// addresses (see DNSConfig.NodeListeners). Called with e.mu held.
func (e *Engine) servesNodeDNSLocked() bool {
	switch e.dns.cfg.NodeListeners {
	case NodeListenersOn:
		return true
	case NodeListenersOff:
		return false
	}
	return e.st.node.DNSDelegated
}

// delegateDNS records that the main daemon relies on our DNS server and
// starts serving the addresses its own would have bound. Only in auto mode,
// once; the flag is kept in the store so a restart keeps serving them.
func (e *Engine) delegateDNS(ctx context.Context, why string) {
	if e.dns == nil || e.dns.cfg.NodeListeners != NodeListenersAuto {
		return
	}
	var done bool
	e.locked(func() { done = e.st.node.DNSDelegated })
	if done {
		return
	}
	unlock, err := e.locks.lock(ctx, nodeLock())
	if err != nil {
		e.log.Warn("recording that the main daemon relies on our DNS", "err", err)
		return
	}
	var node store.Node
	e.locked(func() { node = e.st.node })
	node.DNSDelegated = true
	err = e.store.Update(func(tx *store.Tx) error { return tx.PutNode(node) })
	if err == nil {
		e.locked(func() { e.st.node.DNSDelegated = true })
	}
	unlock()
	if err != nil {
		e.log.Warn("recording that the main daemon relies on our DNS", "err", err)
		return
	}
	e.log.Info("the main daemon relies on our DNS server; serving the node IP and the main daemon's DNS port too", "because", why)
	e.updateDNS()
}

// dnsFor is our resolver for a service's containers, when we have one they
// can reach: the bridge gateway for containers on a bridge; for VM guests,
// which relay to port MainPort of the address they are given, the node IP,
// and only while we serve it.
func (e *Engine) dnsFor(service string, guest bool) (server netip.Addr, zone string) {
	zone = strings.TrimSuffix(e.dns.cfg.Server.Zone(), ".")
	e.locked(func() {
		g := e.st.global
		nodeIP := g != nil && e.servesNodeDNSLocked()
		switch svc := e.st.services[service]; {
		case !guest && svc != nil:
			server = svc.gateway
		case nodeIP:
			server = g.nodeIP
		}
	})
	return server, zone
}

func (e *Engine) dnsStatus(s *protocol.StatusSnapshot) {
	srv := e.dns.cfg.Server
	st := srv.Stats()
	var delegated bool
	e.locked(func() { delegated = e.servesNodeDNSLocked() })
	ds := &protocol.DNSStatus{Zone: srv.Zone(), Records: st.Names, Delegated: delegated}
	for _, l := range srv.Listeners() {
		ds.Listeners = append(ds.Listeners, l.String())
	}
	for _, u := range srv.Upstreams() {
		ds.Upstreams = append(ds.Upstreams, u.String())
	}
	if msg := e.dns.lastErr.Load(); msg != nil {
		s.Warnings = append(s.Warnings, "dns: "+*msg)
	}
	s.DNS = ds
}

// noteDNSDomain records the dns_domain the main daemon sends on attaches:
// without --dns-zone it becomes the zone.
func (e *Engine) noteDNSDomain(domain string) {
	if e.dns == nil || domain == "" || e.dns.cfg.Zone != "" {
		return
	}
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	if cur := e.dns.domain.Load(); cur != nil && *cur == domain {
		return
	}
	e.dns.domain.Store(&domain)
	e.updateDNSZone()
}

// relativeDNSName validates a register/unregister name and returns it
// relative to the zone (the store key, so records follow zone changes). The
// server makes it relative under one view of the zone: the main daemon's
// dns_domain can move the zone at any moment (noteDNSDomain), and a name
// canonicalised in one zone but trimmed against the next kept its old zone
// in the key ("web.prod" after prod.zlayer.local became zlayer.local), or
// was refused as outside the zone.
func (e *Engine) relativeDNSName(name string) (string, error) {
	if e.dns == nil {
		return "", errors.New("the embedded DNS server is disabled")
	}
	if len(name) > 255 {
		// Checked here so the message does not quote it whole.
		return "", fmt.Errorf("name %q is %d bytes long; a DNS name has at most 253 characters", truncate(name), len(name))
	}
	rel, _, err := e.dns.cfg.Server.RelativeName(name)
	return rel, err
}

// registerDNS adds an address to a name. A main daemon that registers
// names relies on our DNS (ZLayer's own never sends register_dns: it runs
// its own server), so the first one delegates the node's DNS to us.
func (e *Engine) registerDNS(ctx context.Context, r protocol.RegisterDNS) (protocol.Response, error) {
	resp, err := e.registerDNSRecord(ctx, r)
	if err == nil {
		e.delegateDNS(ctx, "register_dns")
	}
	return resp, err
}

func (e *Engine) registerDNSRecord(ctx context.Context, r protocol.RegisterDNS) (protocol.Response, error) {
	rel, err := e.relativeDNSName(r.Name)
	if err != nil {
		return nil, err
	}
	if !r.IP.IsValid() {
		return nil, errors.New("ip is empty")
	}
	ip := r.IP.Unmap()
	if ip.Zone() != "" || ip.IsUnspecified() || ip.IsMulticast() {
		return nil, fmt.Errorf("%s is not an address a name can point at", r.IP)
	}
	unlock, err := e.locks.lock(ctx, dnsLock(rel))
	if err != nil {
		return nil, err
	}
	defer unlock()
	var rec store.DNSRecord
	e.locked(func() { rec = e.st.dns[rel] })
	if slices.Contains(rec.Addrs, ip.String()) {
		return protocol.OK{}, nil
	}
	next := store.DNSRecord{Name: rel, Addrs: append(slices.Clone(rec.Addrs), ip.String())}
	if err := e.store.Update(func(tx *store.Tx) error { return tx.PutDNS(next) }); err != nil {
		return nil, err
	}
	if err := e.dns.cfg.Server.Register(rel, ip); err != nil {
		e.store.Update(func(tx *store.Tx) error {
			if len(rec.Addrs) == 0 {
				return tx.DeleteDNS(rel)
			}
			return tx.PutDNS(rec)
		})
		return nil, err
	}
	e.locked(func() { e.st.dns[rel] = next })
	return protocol.OK{}, nil
}

// unregisterDNS removes a name entirely; an unknown name is fine.
func (e *Engine) unregisterDNS(ctx context.Context, r protocol.UnregisterDNS) (protocol.Response, error) {
	rel, err := e.relativeDNSName(r.Name)
	if err != nil {
		return nil, err
	}
	unlock, err := e.locks.lock(ctx, dnsLock(rel))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := e.store.Update(func(tx *store.Tx) error { return tx.DeleteDNS(rel) }); err != nil {
		return nil, err
	}
	e.locked(func() { delete(e.st.dns, rel) })
	if err := e.dns.cfg.Server.Unregister(rel); err != nil {
		return nil, err
	}
	return protocol.OK{}, nil
}
