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

// healthLocked is the last health verdict per peer (scope|pubkey); the
// caller holds e.mu.
func (e *Engine) healthLocked() map[string]bool {
	out := make(map[string]bool, len(e.health))
	for k, v := range e.health {
		out[k] = v
	}
	return out
}

// ensureForwarding turns IP forwarding on the first time the node has an
// overlay: containers reach other nodes and the outside through us.
func (e *Engine) ensureForwarding() {
	e.mu.Lock()
	need := !e.forwarding && (e.st.global != nil || len(e.st.services) > 0)
	if need {
		e.forwarding = true
	}
	e.mu.Unlock()
	if !need {
		return
	}
	changed, err := e.cfg.EnableForwarding()
	if err != nil {
		e.log.Warn("cannot enable IP forwarding; containers will not reach other nodes", "err", err)
		e.mu.Lock()
		e.forwarding = false
		e.mu.Unlock()
		return
	}
	if len(changed) > 0 {
		e.log.Info("enabled IP forwarding", "sysctls", changed)
	}
}
