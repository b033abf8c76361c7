package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
)

// NAT behaviours reported by Probe.
const (
	// BehaviourNone: every server saw one of this host's own addresses and
	// the WireGuard port; there is no NAT on the way.
	BehaviourNone = "none"
	// BehaviourEndpointIndependent: every server saw the same reflexive
	// endpoint, so peers can reach the node there (RFC 4787 endpoint-
	// independent mapping; the filtering may still need a hole punched).
	BehaviourEndpointIndependent = "endpoint-independent"
	// BehaviourEndpointDependent: servers saw different reflexive endpoints,
	// so the mapping a peer would need cannot be learned in advance (a
	// "symmetric" NAT, or one that randomises ports).
	BehaviourEndpointDependent = "endpoint-dependent"
	// BehaviourUnknown: only one server answered, which cannot tell the
	// mappings apart.
	BehaviourUnknown = "unknown"
)

// Result is what Probe learned.
type Result struct {
	// Reflexive lists the distinct reflexive endpoints seen, in the order
	// of the servers that reported them.
	Reflexive []netip.AddrPort
	// Behaviour is one of the Behaviour constants.
	Behaviour string
	// LocalPort is the WireGuard listening port the requests left from.
	LocalPort uint16
	// Errors holds one error per server that did not answer; each names
	// its server.
	Errors []error
}

// Probe asks every server in parallel (as Discover does) and classifies the
// NAT by comparing their answers. Servers on different IP addresses give the
// meaningful comparison; duplicates are asked once. The error is non-nil
// only when no server answered (or the bind is not open); a partial answer
// comes back with its per-server errors in Result.Errors.
func (b *Bind) Probe(ctx context.Context, servers []netip.AddrPort) (Result, error) {
	port, open := b.Port()
	if !open {
		return Result{}, fmt.Errorf("STUN probe: %w", ErrNotOpen)
	}
	var distinct []netip.AddrPort
	for _, s := range servers {
		s = netip.AddrPortFrom(s.Addr().Unmap(), s.Port())
		if !slices.Contains(distinct, s) {
			distinct = append(distinct, s)
		}
	}
	if len(distinct) == 0 {
		return Result{}, errors.New("STUN probe: no servers given")
	}

	answers := make([]netip.AddrPort, len(distinct))
	errs := make([]error, len(distinct))
	var wg sync.WaitGroup
	for i, s := range distinct {
		wg.Go(func() { answers[i], errs[i] = b.Discover(ctx, s) })
	}
	wg.Wait()

	res := Result{LocalPort: port}
	var seen []netip.AddrPort // one per answering server
	for i := range distinct {
		if errs[i] != nil {
			res.Errors = append(res.Errors, errs[i])
			continue
		}
		seen = append(seen, answers[i])
		if !slices.Contains(res.Reflexive, answers[i]) {
			res.Reflexive = append(res.Reflexive, answers[i])
		}
	}
	if len(seen) == 0 {
		return res, fmt.Errorf("STUN probe: no server answered: %w", errors.Join(res.Errors...))
	}
	res.Behaviour = behaviour(seen, port, isLocalAddress)
	return res, nil
}

// behaviour classifies the answers of distinct servers. isLocal reports
// whether an address belongs to this host; it is only asked when every
// answer kept the local port.
func behaviour(answers []netip.AddrPort, port uint16, isLocal func(netip.Addr) bool) string {
	if !slices.ContainsFunc(answers, func(a netip.AddrPort) bool { return a.Port() != port }) &&
		!slices.ContainsFunc(answers, func(a netip.AddrPort) bool { return !isLocal(a.Addr()) }) {
		return BehaviourNone
	}
	if len(answers) < 2 {
		return BehaviourUnknown
	}
	for _, a := range answers[1:] {
		if a != answers[0] {
			return BehaviourEndpointDependent
		}
	}
	return BehaviourEndpointIndependent
}

// isLocalAddress reports whether a is assigned to an interface of this host
// (in the network namespace of the calling thread, which is the one the
// WireGuard socket was opened in).
func isLocalAddress(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}
