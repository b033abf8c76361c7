package engine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peer requests: each commits the peer's new record (and those of the
// peers it takes prefixes from) to the store and the desired state, then
// applies it to the device under the device's lock, and answers ok only
// when the device holds it. A failure after the commit puts all three back.

// peerScopeName is the store's name of a request's scope.
func peerScopeName(ps protocol.PeerScope) string {
	if ps.IsGlobal() {
		return scopeGlobal
	}
	return scopeService(ps.Service)
}

// lockPeers takes what a peer request on pub needs: the topology and the
// service (for a service scope) so the device cannot go away, the peer,
// and the claims (see lockClaims). It returns the scope's device.
func (e *Engine) lockPeers(ctx context.Context, ps protocol.PeerScope, pub string, claims []string) (*device, string, func(), error) {
	scope := peerScopeName(ps)
	keys := []string{peerLock(scope, pub)}
	if !ps.IsGlobal() {
		keys = append(keys, serviceLock(ps.Service))
	}
	release, err := e.holdLooking(func() (func(), error) { return e.lockClaims(ctx, scope, pub, claims, keys...) })
	if err != nil {
		return nil, "", nil, err
	}
	dev, err := e.deviceFor(ps)
	if err != nil {
		release()
		return nil, "", nil, err
	}
	return dev, scope, release, nil
}

// lockClaims takes keys with what giving claims to peer pub of scope
// needs: every prefix of claims, and every other peer of the scope that
// holds one of them (WireGuard gives a prefix to the last peer that claims
// it, so their records change too). The caller holds the topology.
func (e *Engine) lockClaims(ctx context.Context, scope, pub string, claims []string, keys ...string) (func(), error) {
	for {
		holders := e.claimHolders(scope, pub, claims)
		all := slices.Clone(keys)
		for _, h := range holders {
			all = append(all, peerLock(scope, h))
		}
		for _, c := range claims {
			all = append(all, claimLock(scope, c))
		}
		unlock, err := e.locks.lock(ctx, all...)
		if err != nil {
			return nil, err
		}
		if again := e.claimHolders(scope, pub, claims); slices.Equal(again, holders) {
			return unlock, nil
		}
		unlock() // a holder changed before we had its lock: look again
	}
}

// deviceFor finds the WireGuard device of a peer scope.
func (e *Engine) deviceFor(scope protocol.PeerScope) (dev *device, err error) {
	e.locked(func() {
		if scope.IsGlobal() {
			if e.st.global == nil || e.st.global.dev == nil {
				err = errGlobalNotSetUp
				return
			}
			dev = e.st.global.dev
			return
		}
		svc := e.st.services[scope.Service]
		if svc == nil || !svc.dedicated() || svc.dev == nil {
			err = errNoDedicated(scope.Service)
			return
		}
		dev = svc.dev
	})
	return dev, err
}

// errNoDedicated is the reference's exact message (its tests pin it).
func errNoDedicated(service string) error {
	return errUnprefixed{"no dedicated overlay for service " + service}
}

var errGlobalNotSetUp = errUnprefixed{"global overlay not set up; call setup_global_overlay first"}

func (e *Engine) claimHolders(scope, pub string, claims []string) (out []string) {
	e.locked(func() { out = e.st.holdersOf(scope, pub, claims) })
	return out
}

// claimLosers returns, as they will be stored, the other peers of scope
// that hold one of claims: without those prefixes.
func (e *Engine) claimLosers(scope, pub string, claims []string) (out []store.Peer) {
	if len(claims) == 0 {
		return nil
	}
	e.locked(func() {
		for _, h := range e.st.holdersOf(scope, pub, claims) {
			p := *e.st.peers[peerKey(scope, h)]
			p.AllowedIPs = slices.DeleteFunc(slices.Clone(p.AllowedIPs), func(c string) bool { return slices.Contains(claims, c) })
			out = append(out, p)
		}
	})
	return out
}

// peerChange is one peer request's change: the peer before and after
// (nil: absent), and the peers it takes prefixes from, before and after.
type peerChange struct {
	scope, pub   string
	prev, next   *store.Peer
	losersBefore []store.Peer
	losersAfter  []store.Peer
	endpoint     netip.AddrPort // set when the request changes the endpoint
}

// commitPeerChange writes c to the store and the desired state.
func (e *Engine) commitPeerChange(c peerChange) error {
	e.at("peer.commit")
	if err := e.store.Update(func(tx *store.Tx) error { return writePeers(tx, c.scope, c.pub, c.next, c.losersAfter) }); err != nil {
		return err
	}
	e.locked(func() {
		e.setPeersLocked(c.scope, c.pub, c.next, c.losersAfter)
		// In the same critical section as the record: a reconcile pass
		// that resolved the old endpoint then sees the new one and keeps
		// its answer to itself.
		if c.next != nil && c.endpoint.IsValid() {
			e.noteResolvedLocked(peerKey(c.scope, c.pub), c.next.Endpoint, c.endpoint)
		}
	})
	return nil
}

// applyPeerChange writes a committed change to the device; if that fails
// it takes the change back out of the store and the state, puts the device
// back as it was, and returns the device's error.
func (e *Engine) applyPeerChange(dev *device, c peerChange) error {
	if c.next == nil || c.endpoint.IsValid() {
		// The peer goes, or gets the endpoint the request names: a relay
		// route a candidate trial left for it goes too, before the
		// device parses the endpoint, and what the monitor concluded
		// about the path to the endpoint it replaces.
		e.natForgetPath(c.scope, c.pub)
	}
	pcs, err := e.peerWrites(c)
	if err != nil {
		return err
	}
	err = e.applyPeers(dev, c.scope, pcs, c.next, c.prev)
	if err == nil {
		return nil
	}
	back := peerChange{scope: c.scope, pub: c.pub, prev: c.next, next: c.prev, losersBefore: c.losersAfter, losersAfter: c.losersBefore}
	if cerr := e.store.Update(func(tx *store.Tx) error { return writePeers(tx, back.scope, back.pub, back.next, back.losersAfter) }); cerr != nil {
		e.log.Error("could not take back a peer change the device refused; reconcile applies the stored one", "peer", c.pub, "err", cerr)
		return err
	}
	e.locked(func() { e.setPeersLocked(back.scope, back.pub, back.next, back.losersAfter) })
	var restore wgtypes.PeerConfig
	if c.prev == nil {
		restore = wgtypes.PeerConfig{PublicKey: mustKey(c.pub), Remove: true}
	} else if restore, err = e.peerConfig(*c.prev, true); err != nil {
		return err
	}
	if rerr := e.applyPeers(dev, c.scope, []wgtypes.PeerConfig{restore}, c.prev, c.next); rerr != nil {
		e.log.Warn("restoring a peer after a failed change; reconcile retries", "peer", c.pub, "err", rerr)
	}
	return err
}

// peerWrites is what the device needs for a change: a new peer whole, a
// removed one removed, and for a peer it has (as prev) only what differs —
// appended allowed IPs keep every route the peer has — plus the endpoint
// when the request changed it.
func (e *Engine) peerWrites(c peerChange) ([]wgtypes.PeerConfig, error) {
	if c.next == nil {
		return []wgtypes.PeerConfig{{PublicKey: mustKey(c.pub), Remove: true}}, nil
	}
	next, err := e.peerConfig(*c.next, false)
	if err != nil {
		return nil, err
	}
	if c.prev == nil {
		if c.endpoint.IsValid() {
			next.Endpoint = net.UDPAddrFromAddrPort(c.endpoint)
		}
		return []wgtypes.PeerConfig{next}, nil
	}
	prev, err := e.peerConfig(*c.prev, false)
	if err != nil {
		return nil, err
	}
	had := wgtypes.Peer{PublicKey: prev.PublicKey, AllowedIPs: prev.AllowedIPs, PersistentKeepaliveInterval: *prev.PersistentKeepaliveInterval}
	out := wg.PeerChanges([]wgtypes.PeerConfig{next}, []wgtypes.Peer{had})
	if c.endpoint.IsValid() {
		if len(out) == 0 {
			out = []wgtypes.PeerConfig{{PublicKey: next.PublicKey, UpdateOnly: true}}
		}
		out[0].Endpoint = net.UDPAddrFromAddrPort(c.endpoint)
	}
	return out, nil
}

func writePeers(tx *store.Tx, scope, pub string, p *store.Peer, others []store.Peer) error {
	if p == nil {
		if err := tx.DeletePeer(scope, pub); err != nil {
			return err
		}
	} else if err := tx.PutPeer(*p); err != nil {
		return err
	}
	for _, o := range others {
		if err := tx.PutPeer(o); err != nil {
			return err
		}
	}
	return nil
}

// setPeersLocked records a peer (nil: removes it) and others in the state.
// Called with e.mu held.
func (e *Engine) setPeersLocked(scope, pub string, p *store.Peer, others []store.Peer) {
	if p == nil {
		e.st.dropPeer(scope, pub)
		delete(e.resolved, peerKey(scope, pub))
	} else {
		e.st.putPeer(*p)
	}
	for _, o := range others {
		e.st.putPeer(o)
	}
}

// currentPeer is a copy of a peer's record, or nil.
func (e *Engine) currentPeer(scope, pub string) (out *store.Peer) {
	e.locked(func() {
		if p := e.st.peers[peerKey(scope, pub)]; p != nil {
			cp := *p
			cp.AllowedIPs = slices.Clone(p.AllowedIPs)
			out = &cp
		}
	})
	return out
}

// addPeer adds a peer or updates it in place: a changed endpoint or
// keepalive is applied without dropping the session, and an endpoint the
// request repeats unchanged never overrides one WireGuard learned since.
func (e *Engine) addPeer(ctx context.Context, r protocol.AddPeer) (protocol.Response, error) {
	key, err := wg.ParseKey(r.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("public_key: %w", err)
	}
	pub := key.String()
	allowed, err := parseAllowedIPs(r.AllowedIPs)
	if err != nil {
		return nil, err
	}
	if err := validEndpoints(r.Endpoint, r.Candidates); err != nil {
		return nil, err
	}
	if r.PersistentKeepaliveSecs > 65535 {
		return nil, fmt.Errorf("persistent_keepalive_secs %d is above WireGuard's maximum of 65535", r.PersistentKeepaliveSecs)
	}
	// A name is resolved before any lock is taken: it can take seconds.
	var ep netip.AddrPort
	if r.Endpoint != "" {
		if ep, err = e.resolveRequested(ctx, peerScopeName(r.Scope), pub, r.Endpoint); err != nil {
			return nil, err
		}
	}
	dev, scope, release, err := e.lockPeers(ctx, r.Scope, pub, allowed)
	if err != nil {
		return nil, err
	}
	defer release()

	c := peerChange{scope: scope, pub: pub, prev: e.currentPeer(scope, pub)}
	next := store.Peer{
		Scope:      scope,
		PublicKey:  pub,
		Endpoint:   r.Endpoint,
		AllowedIPs: allowed,
		Keepalive:  r.PersistentKeepaliveSecs,
		Candidates: r.Candidates,
	}
	endpointChanged := c.prev == nil || c.prev.Endpoint != r.Endpoint
	if c.prev != nil && !endpointChanged {
		next.LearnedEndpoint = c.prev.LearnedEndpoint
		next.Guest = c.prev.Guest
	}
	c.next = &next
	if endpointChanged && ep.IsValid() {
		c.endpoint = ep
	}
	c.losersAfter = e.claimLosers(scope, pub, allowed)
	c.losersBefore = e.peersNamed(scope, c.losersAfter)
	if err := e.commitPeerChange(c); err != nil {
		return nil, err
	}
	if err := e.applyPeerChange(dev, c); err != nil {
		return nil, err
	}
	e.onPeerChange(scope, c.next, c.prev)
	return protocol.OK{}, nil
}

// peersNamed returns the current records of the peers listed.
func (e *Engine) peersNamed(scope string, list []store.Peer) []store.Peer {
	out := make([]store.Peer, 0, len(list))
	for _, p := range list {
		if cur := e.currentPeer(scope, p.PublicKey); cur != nil {
			out = append(out, *cur)
		}
	}
	return out
}

// resolveRequested is the address of a requested endpoint: a literal, what
// the same endpoint of this peer resolved to before, or a fresh lookup.
func (e *Engine) resolveRequested(ctx context.Context, scope, pub, endpoint string) (netip.AddrPort, error) {
	if ap, ok := e.endpointOf(scope, pub, endpoint); ok {
		return ap, nil
	}
	return resolveEndpoint(ctx, e.cfg.Resolver, endpoint)
}

func validEndpoints(endpoint string, candidates []string) error {
	if endpoint != "" {
		if _, _, err := splitEndpoint(endpoint); err != nil {
			return err
		}
	}
	for _, c := range candidates {
		if _, _, err := splitEndpoint(c); err != nil {
			return fmt.Errorf("candidates: %w", err)
		}
	}
	return nil
}

// removePeer removes a peer; an unknown peer is fine.
func (e *Engine) removePeer(ctx context.Context, r protocol.RemovePeer) (protocol.Response, error) {
	key, err := wg.ParseKey(r.Pubkey)
	if err != nil {
		return nil, fmt.Errorf("pubkey: %w", err)
	}
	pub := key.String()
	dev, scope, release, err := e.lockPeers(ctx, r.Scope, pub, nil)
	if err != nil {
		return nil, err
	}
	defer release()
	c := peerChange{scope: scope, pub: pub, prev: e.currentPeer(scope, pub)}
	if c.prev == nil {
		// Not ours; make sure the device agrees (a leftover goes).
		if err := e.applyPeers(dev, scope, []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}, nil, nil); err != nil {
			return nil, err
		}
		return protocol.OK{}, nil
	}
	if err := e.commitPeerChange(c); err != nil {
		return nil, err
	}
	if err := e.applyPeerChange(dev, c); err != nil {
		return nil, err
	}
	e.onPeerChange(scope, nil, c.prev)
	return protocol.OK{}, nil
}

func (e *Engine) addAllowedIP(ctx context.Context, r protocol.AddAllowedIP) (protocol.Response, error) {
	return e.changeAllowedIP(ctx, r.Pubkey, r.CIDR, r.Scope, true)
}

func (e *Engine) removeAllowedIP(ctx context.Context, r protocol.RemoveAllowedIP) (protocol.Response, error) {
	return e.changeAllowedIP(ctx, r.Pubkey, r.CIDR, r.Scope, false)
}

// changeAllowedIP adds or removes one CIDR of a peer's allowed-IP set.
// Both are idempotent; adding to an unknown peer is an error, removing
// from one is not.
func (e *Engine) changeAllowedIP(ctx context.Context, pubkey, cidr string, ps protocol.PeerScope, add bool) (protocol.Response, error) {
	key, err := wg.ParseKey(pubkey)
	if err != nil {
		return nil, fmt.Errorf("pubkey: %w", err)
	}
	pub := key.String()
	cidr, err = parseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("cidr: %w", err)
	}
	var claims []string
	if add {
		claims = []string{cidr}
	}
	dev, scope, release, err := e.lockPeers(ctx, ps, pub, claims)
	if err != nil {
		return nil, err
	}
	defer release()
	c := peerChange{scope: scope, pub: pub, prev: e.currentPeer(scope, pub)}
	if c.prev == nil {
		if add {
			return nil, fmt.Errorf("cannot add allowed IP %s to unknown peer %s; add_peer it first", cidr, pub)
		}
		return protocol.OK{}, nil
	}
	if slices.Contains(c.prev.AllowedIPs, cidr) == add {
		return protocol.OK{}, nil
	}
	next := *c.prev
	if add {
		next.AllowedIPs = append(slices.Clone(c.prev.AllowedIPs), cidr)
		slices.Sort(next.AllowedIPs)
	} else {
		next.AllowedIPs = slices.DeleteFunc(slices.Clone(c.prev.AllowedIPs), func(s string) bool { return s == cidr })
	}
	c.next = &next
	c.losersAfter = e.claimLosers(scope, pub, claims)
	c.losersBefore = e.peersNamed(scope, c.losersAfter)
	if err := e.commitPeerChange(c); err != nil {
		return nil, err
	}
	if err := e.applyPeerChange(dev, c); err != nil {
		return nil, err
	}
	return protocol.OK{}, nil
}
