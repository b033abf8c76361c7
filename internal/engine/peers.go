package engine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func (e *Engine) peerLock(scope, pubkey string) func() {
	return e.locks.lock("peer:" + peerKey(scope, pubkey))
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
	if r.Endpoint != "" {
		if _, _, err := splitEndpoint(r.Endpoint); err != nil {
			return nil, err
		}
	}
	for _, c := range r.Candidates {
		if _, _, err := splitEndpoint(c); err != nil {
			return nil, fmt.Errorf("candidates: %w", err)
		}
	}
	if r.PersistentKeepaliveSecs > 65535 {
		return nil, fmt.Errorf("persistent_keepalive_secs %d is above WireGuard's maximum of 65535", r.PersistentKeepaliveSecs)
	}
	dev, scope, release, err := e.lockDevice(r.Scope)
	if err != nil {
		return nil, err
	}
	defer release()
	unlock := e.lockClaim(scope, pub, allowed)
	defer unlock()

	e.mu.Lock()
	var prev *store.Peer
	if p := e.st.peers[peerKey(scope, pub)]; p != nil {
		cp := *p
		prev = &cp
	}
	e.mu.Unlock()

	next := store.Peer{
		Scope:      scope,
		PublicKey:  pub,
		Endpoint:   r.Endpoint,
		AllowedIPs: allowed,
		Keepalive:  r.PersistentKeepaliveSecs,
		Candidates: r.Candidates,
	}
	endpointChanged := prev == nil || prev.Endpoint != r.Endpoint
	if prev != nil && !endpointChanged {
		next.LearnedEndpoint = prev.LearnedEndpoint
		next.Guest = prev.Guest
	}
	pc, err := e.peerConfig(ctx, next, false)
	if err != nil {
		return nil, err
	}
	if endpointChanged && r.Endpoint != "" {
		ap, err := resolveEndpoint(ctx, r.Endpoint)
		if err != nil {
			return nil, err
		}
		pc.Endpoint = udpAddr(ap)
		e.noteResolved(scope, pub, ap)
	}
	if err := dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
		return nil, fmt.Errorf("configure %s: %w", dev.Name(), err)
	}
	if err := e.syncPeerRoutes(scope, dev.Name(), &next, prev); err != nil {
		e.restorePeer(ctx, dev, prev, pub)
		return nil, err
	}
	losers := e.claimLosers(scope, pub, next.AllowedIPs)
	if err := e.store.Update(func(tx *store.Tx) error { return putPeers(tx, next, losers) }); err != nil {
		e.restorePeer(ctx, dev, prev, pub)
		return nil, err
	}
	e.mu.Lock()
	e.st.peers[peerKey(scope, pub)] = &next
	e.setPeersLocked(losers)
	e.mu.Unlock()
	e.onPeerChange(scope, &next, prev)
	return protocol.OK{}, nil
}

// lockClaim locks a peer and every other peer of the scope that holds one
// of the prefixes it claims: WireGuard gives a prefix to the last peer
// that claims it, so the stored records of those peers change too.
func (e *Engine) lockClaim(scope, pub string, claims []string) func() {
	for {
		holders := e.claimHolders(scope, pub, claims)
		keys := []string{"peer:" + peerKey(scope, pub)}
		for _, h := range holders {
			keys = append(keys, "peer:"+peerKey(scope, h))
		}
		unlock := e.locks.lock(keys...)
		if again := e.claimHolders(scope, pub, claims); slices.Equal(again, holders) {
			return unlock // the holders cannot change while we hold their locks
		}
		unlock()
	}
}

func (e *Engine) claimHolders(scope, pub string, claims []string) []string {
	var out []string
	for _, p := range e.claimLosers(scope, pub, claims) {
		out = append(out, p.PublicKey)
	}
	return out
}

// claimLosers returns, as they will be stored, the other peers of scope
// that hold one of claims: without those prefixes.
func (e *Engine) claimLosers(scope, pub string, claims []string) []store.Peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []store.Peer
	for _, p := range e.st.peersOf(scope) {
		if p.PublicKey == pub || !slices.ContainsFunc(p.AllowedIPs, func(c string) bool { return slices.Contains(claims, c) }) {
			continue
		}
		p.AllowedIPs = slices.DeleteFunc(slices.Clone(p.AllowedIPs), func(c string) bool { return slices.Contains(claims, c) })
		out = append(out, p)
	}
	return out
}

func putPeers(tx *store.Tx, next store.Peer, losers []store.Peer) error {
	for _, p := range append([]store.Peer{next}, losers...) {
		if err := tx.PutPeer(p); err != nil {
			return err
		}
	}
	return nil
}

// setPeersLocked records peers in the state. Called with e.mu held.
func (e *Engine) setPeersLocked(peers []store.Peer) {
	for _, p := range peers {
		p := p
		e.st.peers[peerKey(p.Scope, p.PublicKey)] = &p
	}
}

// restorePeer puts a device's view of one peer back to prev after a later
// step failed (best effort; reconcile repairs what this cannot).
func (e *Engine) restorePeer(ctx context.Context, dev wg.Device, prev *store.Peer, pub string) {
	var pc wgtypes.PeerConfig
	if prev == nil {
		pc = wgtypes.PeerConfig{PublicKey: mustKey(pub), Remove: true}
	} else {
		var err error
		if pc, err = e.peerConfig(ctx, *prev, true); err != nil {
			return
		}
	}
	if err := dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
		e.log.Warn("restoring a peer after a failed change", "peer", pub, "err", err)
	}
}

func udpAddr(ap netip.AddrPort) *net.UDPAddr { return net.UDPAddrFromAddrPort(ap) }

// syncPeerRoutes adds the routes a peer's allowed IPs need and removes the
// ones only its previous version needed.
func (e *Engine) syncPeerRoutes(scope, dev string, next, prev *store.Peer) error {
	covered := e.coveredFor(scope)
	var want, old []netip.Prefix
	if next != nil {
		want = peerRoutes([]store.Peer{*next}, covered)
	}
	if prev != nil {
		old = peerRoutes([]store.Peer{*prev}, covered)
	}
	for _, p := range want {
		if err := e.cfg.Net.EnsureRoute(linuxnet.Route{Dst: p, Dev: dev, Scope: linuxnet.ScopeLink}); err != nil {
			return err
		}
	}
	var gone []netip.Prefix
	for _, p := range old {
		if !slices.Contains(want, p) {
			gone = append(gone, p)
		}
	}
	if len(gone) == 0 {
		// The common case (a new peer, or allowed IPs inside the cluster)
		// needs no look at the other peers: add_peer stays O(1).
		return nil
	}
	// A route another peer of the device still needs stays.
	e.mu.Lock()
	stillNeeded := map[netip.Prefix]bool{}
	for _, p := range e.st.peers {
		if p.Scope != scope || p.PublicKey == pubOf(next, prev) {
			continue
		}
		for _, r := range peerRoutes([]store.Peer{*p}, covered) {
			stillNeeded[r] = true
		}
	}
	e.mu.Unlock()
	for _, p := range gone {
		if stillNeeded[p] {
			continue
		}
		if err := e.cfg.Net.DeleteRoute(linuxnet.Route{Dst: p, Dev: dev}); err != nil {
			return err
		}
	}
	return nil
}

func pubOf(a, b *store.Peer) string {
	if a != nil {
		return a.PublicKey
	}
	if b != nil {
		return b.PublicKey
	}
	return ""
}

// coveredFor is what a scope's device already routes by its addresses.
func (e *Engine) coveredFor(scope string) []netip.Prefix {
	e.mu.Lock()
	defer e.mu.Unlock()
	if scope == scopeGlobal {
		return []netip.Prefix{e.st.cluster}
	}
	for _, svc := range e.st.services {
		if scopeService(svc.rec.Name) == scope {
			return []netip.Prefix{netip.PrefixFrom(svc.gateway, svc.gateway.BitLen()), svc.subnet}
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
	dev, scope, release, err := e.lockDevice(r.Scope)
	if err != nil {
		return nil, err
	}
	defer release()
	unlock := e.peerLock(scope, pub)
	defer unlock()
	e.mu.Lock()
	prev := e.st.peers[peerKey(scope, pub)]
	e.mu.Unlock()
	if err := dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}}); err != nil {
		return nil, fmt.Errorf("configure %s: %w", dev.Name(), err)
	}
	if prev == nil {
		return protocol.OK{}, nil
	}
	if err := e.store.Update(func(tx *store.Tx) error { return tx.DeletePeer(scope, pub) }); err != nil {
		e.restorePeer(ctx, dev, prev, pub)
		return nil, err
	}
	e.mu.Lock()
	delete(e.st.peers, peerKey(scope, pub))
	e.mu.Unlock()
	if err := e.syncPeerRoutes(scope, dev.Name(), nil, prev); err != nil {
		e.log.Warn("removing a removed peer's routes; reconcile retries", "peer", pub, "err", err)
	}
	e.onPeerChange(scope, nil, prev)
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
	c, err := parseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("cidr: %w", err)
	}
	dev, scope, release, err := e.lockDevice(ps)
	if err != nil {
		return nil, err
	}
	defer release()
	var unlock func()
	if add {
		unlock = e.lockClaim(scope, pub, []string{c})
	} else {
		unlock = e.peerLock(scope, pub)
	}
	defer unlock()
	e.mu.Lock()
	cur := e.st.peers[peerKey(scope, pub)]
	var prev store.Peer
	if cur != nil {
		prev = *cur
		prev.AllowedIPs = slices.Clone(cur.AllowedIPs)
	}
	e.mu.Unlock()
	if cur == nil {
		if add {
			return nil, fmt.Errorf("cannot add allowed IP %s to unknown peer %s; add_peer it first", c, pub)
		}
		return protocol.OK{}, nil
	}
	has := slices.Contains(prev.AllowedIPs, c)
	if has == add {
		return protocol.OK{}, nil
	}
	next := prev
	if add {
		next.AllowedIPs = append(slices.Clone(prev.AllowedIPs), c)
		slices.Sort(next.AllowedIPs)
	} else {
		next.AllowedIPs = slices.DeleteFunc(slices.Clone(prev.AllowedIPs), func(s string) bool { return s == c })
	}
	pc, err := e.peerConfig(ctx, next, false)
	if err != nil {
		return nil, err
	}
	pc.UpdateOnly = true
	if err := dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}}); err != nil {
		return nil, fmt.Errorf("configure %s: %w", dev.Name(), err)
	}
	if err := e.syncPeerRoutes(scope, dev.Name(), &next, &prev); err != nil {
		e.restorePeer(ctx, dev, &prev, pub)
		return nil, err
	}
	var losers []store.Peer
	if add {
		losers = e.claimLosers(scope, pub, []string{c})
	}
	if err := e.store.Update(func(tx *store.Tx) error { return putPeers(tx, next, losers) }); err != nil {
		e.restorePeer(ctx, dev, &prev, pub)
		return nil, err
	}
	e.mu.Lock()
	e.st.peers[peerKey(scope, pub)] = &next
	e.setPeersLocked(losers)
	e.mu.Unlock()
	return protocol.OK{}, nil
}
