package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
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
	// LoopbackPort is the port of the always-on 127.0.0.1 listener
	// (--dns-port, default 15353); 0 disables it.
	LoopbackPort uint16
	// OverlayPort is the port on the node IP and the bridge gateways
	// (53: what containers' resolv.conf points at).
	OverlayPort uint16
}

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
}

// AllowRecursion is the policy for dns.Config: loopback, this node's
// addresses, the cluster and every local subnet — never the world.
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
	policy.cfg = cfg
	e.dns = &policy.dnsState
	e.mu.Lock()
	records := map[string][]netip.Addr{}
	for name, r := range e.st.dns {
		for _, a := range r.Addrs {
			if ip, err := netip.ParseAddr(a); err == nil {
				records[name] = append(records[name], ip)
			}
		}
	}
	e.mu.Unlock()
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

func (e *Engine) updateDNSZone() {
	zone := e.zoneName()
	srv := e.dns.cfg.Server
	if strings.TrimSuffix(srv.Zone(), ".") != strings.ToLower(strings.TrimSuffix(zone, ".")) {
		if err := srv.SetZone(zone); err != nil {
			e.log.Warn("cannot use DNS zone", "zone", zone, "err", err)
		} else {
			e.log.Info("DNS zone", "zone", srv.Zone())
		}
	}
}

// updateDNS follows the topology: listeners on loopback, the node IP and
// every bridge gateway; recursion for the cluster and the local subnets;
// reverse zones for them.
func (e *Engine) updateDNS() {
	e.updateDNSZone()
	cfg := e.dns.cfg
	var listen []netip.AddrPort
	if cfg.LoopbackPort != 0 {
		listen = append(listen, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), cfg.LoopbackPort))
	}
	var allowed, reverse []netip.Prefix
	e.mu.Lock()
	if g := e.st.global; g != nil {
		listen = append(listen, netip.AddrPortFrom(g.nodeIP, cfg.OverlayPort))
	}
	if e.st.cluster.IsValid() {
		allowed = append(allowed, e.st.cluster)
		reverse = append(reverse, e.st.cluster)
	}
	if e.st.slice.IsValid() {
		allowed = append(allowed, e.st.slice)
	}
	for _, svc := range e.st.services {
		listen = append(listen, netip.AddrPortFrom(svc.gateway, cfg.OverlayPort))
		allowed = append(allowed, svc.subnet)
		if !e.st.cluster.IsValid() || !e.st.cluster.Contains(svc.subnet.Addr()) {
			reverse = append(reverse, svc.subnet)
		}
	}
	e.mu.Unlock()
	sort.Slice(listen, func(i, j int) bool { return listen[i].Compare(listen[j]) < 0 })
	listen = slices.Compact(listen)
	e.dns.allowed.Store(&allowed)
	if err := cfg.Server.SetReversePrefixes(reverse); err != nil {
		e.log.Warn("DNS reverse zones", "err", err)
	}
	if err := cfg.Server.SetListeners(listen); err != nil {
		msg := err.Error()
		e.dns.lastErr.Store(&msg)
		e.log.Warn("DNS listeners", "err", err)
	} else {
		e.dns.lastErr.Store(nil)
	}
}

// dnsFor is the resolver of a service's containers: the bridge gateway,
// where we listen, and the cluster zone.
func (e *Engine) dnsFor(service string) (netip.Addr, string) {
	zone := strings.TrimSuffix(e.dns.cfg.Server.Zone(), ".")
	e.mu.Lock()
	defer e.mu.Unlock()
	if svc := e.st.services[service]; svc != nil {
		return svc.gateway, zone
	}
	if g := e.st.global; g != nil {
		return g.nodeIP, zone
	}
	return netip.Addr{}, zone
}

func (e *Engine) dnsStatus(s *protocol.StatusSnapshot) {
	srv := e.dns.cfg.Server
	st := srv.Stats()
	ds := &protocol.DNSStatus{Zone: srv.Zone(), Records: st.Names}
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
// relative to the zone (the store key, so records follow zone changes).
func (e *Engine) relativeDNSName(name string) (string, error) {
	if e.dns == nil {
		return "", errors.New("the embedded DNS server is disabled")
	}
	if len(name) > 255 {
		// Checked here so the message does not quote it whole.
		return "", fmt.Errorf("name %q is %d bytes long; a DNS name has at most 253 characters", truncate(name), len(name))
	}
	fqdn, err := e.dns.cfg.Server.CanonicalName(name)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(fqdn, "."+e.dns.cfg.Server.Zone()), nil
}

// registerDNS adds an address to a name.
func (e *Engine) registerDNS(r protocol.RegisterDNS) (protocol.Response, error) {
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
	unlock := e.locks.lock("dns:" + rel)
	defer unlock()
	e.mu.Lock()
	rec := e.st.dns[rel]
	e.mu.Unlock()
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
	e.mu.Lock()
	e.st.dns[rel] = next
	e.mu.Unlock()
	return protocol.OK{}, nil
}

// unregisterDNS removes a name entirely; an unknown name is fine.
func (e *Engine) unregisterDNS(r protocol.UnregisterDNS) (protocol.Response, error) {
	rel, err := e.relativeDNSName(r.Name)
	if err != nil {
		return nil, err
	}
	unlock := e.locks.lock("dns:" + rel)
	defer unlock()
	if err := e.store.Update(func(tx *store.Tx) error { return tx.DeleteDNS(rel) }); err != nil {
		return nil, err
	}
	e.mu.Lock()
	delete(e.st.dns, rel)
	e.mu.Unlock()
	if err := e.dns.cfg.Server.Unregister(rel); err != nil {
		return nil, err
	}
	return protocol.OK{}, nil
}
