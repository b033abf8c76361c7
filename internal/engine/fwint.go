package engine

import (
	"net/netip"
	"sort"
	"sync"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/firewall"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Firewall is what the engine needs from the firewall package: one table
// of our own, replaced atomically.
type Firewall interface {
	Apply(firewall.Spec) error
	Delete(table string) error
	Drifted(firewall.Spec) (bool, error)
	Inspect(table string) (firewall.State, error)
}

// FirewallConfig wires the firewall into the engine.
type FirewallConfig struct {
	Firewall Firewall
	// Table is our nftables table (default "zlayer_overlay").
	Table string
	// Masquerade turns egress NAT for containers on (--masquerade).
	Masquerade bool
	// Isolate closes containers to everything but the overlay, their
	// bridge, other containers' join_global links and the node
	// (--isolate, on by default in the daemon).
	Isolate bool
}

type fwState struct {
	cfg     FirewallConfig
	mu      sync.Mutex // serialises rebuilds; never held with Engine.mu
	lastErr string
	present bool
	rules   int // rule count after the last rebuild or check, for status
}

func (e *Engine) enableFirewall(cfg FirewallConfig) {
	if cfg.Table == "" {
		cfg.Table = firewall.DefaultTable
	}
	e.fw = &fwState{cfg: cfg}
	e.hooks.topology = append(e.hooks.topology, func() { e.syncFirewall(false) })
	e.hooks.statusExtra = append(e.hooks.statusExtra, e.firewallStatus)
}

// firewallSpec derives our table from the desired state; ok is false when
// no table should exist (no global overlay).
func (e *Engine) firewallSpec() (firewall.Spec, bool) {
	// Our DNS listeners as bound (the topology hook of DNS runs first), so
	// the input rule covers the sockets that exist. Read before e.mu:
	// Listeners waits for a SetListeners in progress.
	var dnsListeners []netip.AddrPort
	mainPort, containerPort := uint16(dns.MainDaemonPort), uint16(53)
	if e.dns != nil {
		dnsListeners = e.dns.cfg.Server.Listeners()
		mainPort = e.dns.cfg.MainPort
		if e.dns.cfg.OverlayPort != 0 {
			containerPort = e.dns.cfg.OverlayPort
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	g := e.st.global
	if g == nil {
		return firewall.Spec{}, false
	}
	spec := firewall.Spec{
		Table:         e.fw.cfg.Table,
		OverlayIfaces: []string{g.rec.Interface},
		Cluster:       e.st.clusters(),
		Masquerade:    e.fw.cfg.Masquerade,
		ClampMSS:      true,
		Isolate:       e.fw.cfg.Isolate,
		// Host ends of join_global links: vethName(pid, 1) is "zl-v<pid>-e1".
		ContainerLinks: "zl-v",
		DNS:            dnsListeners,
	}
	// The main daemon's DNS addresses too, whoever serves them: its own
	// server binds them until it relies on ours, and the underlay has no
	// more business with it than with ours.
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	for _, a := range []netip.AddrPort{netip.AddrPortFrom(lo, mainPort), netip.AddrPortFrom(g.nodeIP, mainPort), netip.AddrPortFrom(g.nodeIP, containerPort),
		netip.AddrPortFrom(g.nodeIP2, mainPort), netip.AddrPortFrom(g.nodeIP2, containerPort)} {
		if a.Port() != 0 && a.Addr().IsValid() {
			spec.DNS = append(spec.DNS, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
		}
	}
	if e.st.slice.IsValid() {
		spec.Sources = append(spec.Sources, e.st.slices()...)
	}
	for _, svc := range e.st.services {
		spec.Bridges = append(spec.Bridges, svc.rec.Bridge)
		spec.Sources = append(spec.Sources, svc.allSubnets()...)
		if svc.dedicated() {
			spec.OverlayIfaces = append(spec.OverlayIfaces, svc.rec.Interface)
			spec.Dedicated = append(spec.Dedicated, firewall.Dedicated{Device: svc.rec.Interface, Bridge: svc.rec.Bridge})
		}
	}
	sort.Strings(spec.Bridges)
	sort.Strings(spec.OverlayIfaces)
	sort.Slice(spec.Dedicated, func(i, j int) bool { return spec.Dedicated[i].Device < spec.Dedicated[j].Device })
	return spec, true
}

// syncFirewall rebuilds our table from the desired state, or deletes it
// when there is no global overlay. onlyIfDrifted skips the rebuild when the
// kernel's table already matches (the periodic check).
func (e *Engine) syncFirewall(onlyIfDrifted bool) bool {
	e.fw.mu.Lock()
	defer e.fw.mu.Unlock()
	spec, want := e.firewallSpec()
	fw := e.fw.cfg.Firewall
	if !want {
		if !e.fw.present && onlyIfDrifted {
			return false
		}
		if err := fw.Delete(e.fw.cfg.Table); err != nil {
			e.fw.lastErr = err.Error()
			e.observeFirewallFailure()
			e.log.Warn("deleting our nftables table", "err", err)
			return false
		}
		changed := e.fw.present
		e.fw.present, e.fw.lastErr = false, ""
		return changed
	}
	if onlyIfDrifted {
		drifted, err := fw.Drifted(spec)
		if err == nil && !drifted {
			e.countRulesLocked()
			return false
		}
		if err == nil {
			e.log.Info("our nftables table drifted; rebuilding it", "table", spec.Table)
		}
	}
	if err := fw.Apply(spec); err != nil {
		e.fw.lastErr = err.Error()
		e.observeFirewallFailure()
		e.log.Warn("building our nftables table", "table", spec.Table, "err", err)
		return false
	}
	e.fw.present, e.fw.lastErr = true, ""
	e.countRulesLocked()
	return true
}

// countRulesLocked refreshes the rule count status shows, so status itself
// never dumps the ruleset; the caller holds e.fw.mu.
func (e *Engine) countRulesLocked() {
	if st, err := e.fw.cfg.Firewall.Inspect(e.fw.cfg.Table); err == nil {
		e.fw.rules = st.Rules
	}
}

func (e *Engine) firewallStatus(s *protocol.StatusSnapshot) {
	e.fw.mu.Lock()
	fs := &protocol.FirewallStatus{Table: e.fw.cfg.Table, Masquerade: e.fw.cfg.Masquerade, LastError: e.fw.lastErr}
	if e.fw.present {
		fs.Rules = e.fw.rules
	}
	e.fw.mu.Unlock()
	s.Firewall = fs
}
