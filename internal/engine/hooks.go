package engine

import (
	"net/netip"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// hooks connect the engine's core to the optional subsystems (DNS, firewall,
// health monitor) without the core knowing them; each is nil when the
// subsystem is off.
type hooks struct {
	// topology is called after every change of devices, services or
	// addresses, and after each reconcile that changed something.
	topology []func()
	// dnsFor is the resolver (address, domain) for containers of a service.
	// guest is true for VM guests, which reach it differently.
	dnsFor func(service string, guest bool) (netip.Addr, string)
	// peerChanged is called after a peer was added, updated or removed.
	peerChanged func(scope string, next, prev *store.Peer)
	// statusExtra adds subsystem fields to a status answer.
	statusExtra []func(*protocol.StatusSnapshot)
}

func (e *Engine) topologyChanged() {
	e.ensureForwarding()
	for _, f := range e.hooks.topology {
		f()
	}
}

func (e *Engine) onPeerChange(scope string, next, prev *store.Peer) {
	if e.hooks.peerChanged != nil {
		e.hooks.peerChanged(scope, next, prev)
	}
}

func (e *Engine) dnsZone(service string, guest bool) (netip.Addr, string) {
	if e.hooks.dnsFor == nil {
		return netip.Addr{}, ""
	}
	return e.hooks.dnsFor(service, guest)
}

func (e *Engine) statusHook(s *protocol.StatusSnapshot) {
	for _, f := range e.hooks.statusExtra {
		f(s)
	}
}

// ensureForwarding keeps IP forwarding as the overlays need it: on for
// each address family the cluster, the node slice or a service subnet
// uses (containers reach other nodes and the outside through us), and put
// back once no overlay of that family is left. An IPv4-only cluster never
// turns IPv6 forwarding on, which on hosts that take router
// advertisements would cost the host its IPv6 default route.
func (e *Engine) ensureForwarding() {
	if e.cfg.EnableForwarding == nil {
		return
	}
	need := func() (v4, v6 bool) {
		note := func(p netip.Prefix) {
			switch {
			case !p.IsValid():
			case p.Addr().Is4():
				v4 = true
			default:
				v6 = true
			}
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.st.global != nil {
			for _, p := range append(e.st.clusters(), e.st.slices()...) {
				note(p)
			}
		}
		for _, svc := range e.st.services {
			for _, sub := range svc.allSubnets() {
				note(sub)
			}
		}
		e.forwarding = v4 || v6
		return v4, v6
	}
	enabled, restored, err := e.cfg.EnableForwarding(need)
	if len(enabled) > 0 {
		e.log.Info("enabled IP forwarding", "sysctls", enabled)
	}
	if len(restored) > 0 {
		e.log.Info("no overlay needs them any more: restored forwarding sysctls", "sysctls", restored)
	}
	if err != nil {
		e.log.Warn("cannot set IP forwarding as the overlays need it; containers may not reach other nodes", "err", err)
	}
}
