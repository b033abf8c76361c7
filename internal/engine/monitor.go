package engine

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Health thresholds: WireGuard re-handshakes every 2 minutes while traffic
// flows and rejects a session after 180 s (REJECT_AFTER_TIME), so a peer
// with no handshake for 180 s is down. With a persistent keepalive the peer
// proves itself far more often, but keepalives are not handshakes (the
// handshake age cycles up to 120 s on a perfectly healthy link), so the
// fast rule looks at the receive counter instead: a peer whose bytes stop
// arriving for two keepalive intervals plus slack is down.
const (
	healthThreshold     = 180 * time.Second
	candidateTrialAfter = 6 * time.Second // one handshake attempt (REKEY_TIMEOUT 5 s) plus slack
)

// healthyAt decides a peer's health from its last handshake and the last
// time its receive counter moved (zero if never seen moving).
func healthyAt(hs time.Time, keepalive time.Duration, lastRx, now time.Time) bool {
	if hs.IsZero() || now.Sub(hs) >= healthThreshold {
		return false
	}
	if keepalive <= 0 {
		return true
	}
	limit := 2*keepalive + 10*time.Second
	return now.Sub(hs) < limit || (!lastRx.IsZero() && now.Sub(lastRx) < limit)
}

// rxMark is when a peer's receive counter was last seen to move.
type rxMark struct {
	bytes int64
	at    time.Time
}

// trial is where a peer's candidate endpoints stand.
type trial struct {
	index int       // candidate in use
	since time.Time // when it was set
}

// startMonitor polls the devices' peers every interval and pushes
// peer_health_changed on every transition and nat_endpoint_changed when a
// peer's endpoint moves (WireGuard learned a new one, or a candidate won).
func (e *Engine) startMonitor(interval time.Duration) {
	if interval <= 0 {
		return
	}
	e.goBackground(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-e.bgCtx.Done():
				return
			case <-t.C:
				e.checkPeers(time.Now())
			}
		}
	})
}

func (e *Engine) publish(ev protocol.Event) {
	if e.cfg.Publish != nil {
		e.cfg.Publish(ev)
	}
}

type scopedDevice struct {
	scope string
	dev   *device
}

// CheckPeers runs one monitor round now (tests).
func (e *Engine) CheckPeers() { e.checkPeers(time.Now()) }

// checkPeers reads every device's peers, pushes health events, and moves
// unhealthy peers to their next candidate endpoint and learned endpoints
// into the state. Name resolution for candidates happens with no lock held
// (a name can take seconds); the switch itself under the device's lock.
func (e *Engine) checkPeers(now time.Time) {
	var switches []candidateSwitch
	func() {
		e.topology.RLock()
		defer e.topology.RUnlock()
		switches = e.observePeers(now)
	}()
	lookUpSideBySide(context.Background(), len(switches), func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		switches[i].addr, switches[i].err = resolveEndpoint(ctx, e.cfg.Resolver, switches[i].candidate)
	})
	if len(switches) == 0 {
		return
	}
	e.topology.RLock()
	defer e.topology.RUnlock()
	e.at("monitor.switch")
	for _, sw := range switches {
		e.switchCandidate(sw, now)
	}
}

// observePeers is one look at every device: health transitions, learned
// endpoints, and the candidate switches due. Called with the topology held.
func (e *Engine) observePeers(now time.Time) []candidateSwitch {
	var devs []scopedDevice
	e.locked(func() {
		if g := e.st.global; g != nil && g.dev != nil {
			devs = append(devs, scopedDevice{scopeGlobal, g.dev})
		}
		for name, svc := range e.st.services {
			if svc.dev != nil {
				devs = append(devs, scopedDevice{scopeService(name), svc.dev})
			}
		}
	})
	seen := map[string]bool{}
	endpoints := map[netip.AddrPort]bool{}
	v := e.relayView()
	var switches []candidateSwitch
	for _, d := range devs {
		snap, err := d.dev.read()
		if err != nil {
			e.log.Warn("reading peers for the health check", "device", d.dev.Name(), "err", err)
			continue
		}
		e.at("monitor.read")
		for _, p := range snap.Peers {
			key := peerKey(d.scope, p.PublicKey.String())
			seen[key] = true
			if p.Endpoint != nil {
				ap := p.Endpoint.AddrPort()
				endpoints[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
			}
			if sw, ok := e.checkPeer(d, key, p, now, v); ok {
				switches = append(switches, sw)
			}
		}
	}
	e.locked(func() {
		keepOnly(e.health, seen)
		keepOnly(e.trials, seen)
		keepOnly(e.rx, seen)
	})
	e.natAfterRound(seen, endpoints, v)
	return switches
}

// candidateSwitch is a peer to move to its next candidate endpoint.
type candidateSwitch struct {
	d         scopedDevice
	key       string
	peer      store.Peer
	index     int
	candidate string
	relay     bool // through our TURN allocation
	addr      netip.AddrPort
	err       error
	// read is the peer's endpoint when the device was read: what the
	// switch was decided on (see movedSinceRead).
	read netip.AddrPort
}

func (e *Engine) checkPeer(d scopedDevice, key string, p wgtypes.Peer, now time.Time, v relayView) (candidateSwitch, bool) {
	pub := p.PublicKey.String()
	var healthy, was bool
	var desired *store.Peer
	var tr *trial
	var configured string
	e.locked(func() {
		mark, seen := e.rx[key]
		if !seen || p.ReceiveBytes != mark.bytes {
			mark = rxMark{bytes: p.ReceiveBytes}
			if seen || p.ReceiveBytes > 0 {
				mark.at = now
			}
			e.rx[key] = mark
		}
		healthy = healthyAt(p.LastHandshakeTime, p.PersistentKeepaliveInterval, mark.at, now)
		was = e.health[key]
		e.health[key] = healthy
		if cp := e.st.peers[key]; cp != nil {
			c := *cp
			desired = &c
		}
		tr = e.trials[key]
		if r, ok := e.resolved[key]; ok {
			configured = r.addr.String()
		}
	})
	if healthy != was {
		e.log.Info("peer health changed", "peer", pub, "scope", d.scope, "healthy", healthy, "last_handshake", p.LastHandshakeTime)
		e.publish(protocol.PeerHealthChanged{Pubkey: pub, Healthy: healthy})
	}
	if desired == nil || desired.Guest {
		return candidateSwitch{}, false
	}
	cur := ""
	var curAP netip.AddrPort
	if p.Endpoint != nil {
		ap := p.Endpoint.AddrPort()
		curAP = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		cur = ap.String()
	}
	cands := candidates(desired)
	// Each candidate directly, then (with a TURN allocation) through the
	// relay.
	trials := e.natTrials(d.scope, cands, v)
	stale := d.scope == scopeGlobal && e.natStale(key, curAP, cands, p.LastHandshakeTime, v)
	if (!healthy || stale) && len(trials) > 1 {
		if tr != nil && now.Sub(tr.since) < candidateTrialAfter {
			return candidateSwitch{}, false
		}
		next := 0
		if tr != nil {
			next = (tr.index + 1) % len(trials)
		}
		return candidateSwitch{d: d, key: key, peer: *desired, index: next, candidate: trials[next].endpoint, relay: trials[next].relay, read: curAP}, true
	}
	relayed := false
	if d.scope == scopeGlobal {
		relayed = e.natPeerPath(key, pub, curAP, healthy, v.direct(cands), v)
	}
	// A handshake on an endpoint we did not configure: WireGuard learned
	// it (the peer roamed, or a NAT rebound its port), or a candidate won.
	// A relayed one is not kept: it lives as long as an allocation.
	if healthy && !relayed && cur != "" && cur != desired.LearnedEndpoint && cur != configured {
		e.learnEndpoint(d, desired, cur, curAP)
	}
	return candidateSwitch{}, false
}

// candidates lists a peer's endpoints to try: the requested one first.
func candidates(p *store.Peer) []string {
	out := make([]string, 0, 1+len(p.Candidates))
	if p.Endpoint != "" {
		out = append(out, p.Endpoint)
	}
	for _, c := range p.Candidates {
		if c != p.Endpoint {
			out = append(out, c)
		}
	}
	return out
}

// switchCandidate moves an unhealthy peer to its next candidate endpoint,
// which gets its chance to handshake before the one after it. The switch
// was decided on the record checkPeer read, with no lock held since: it is
// made only if the peer still has that record, or it would overwrite an
// endpoint an add_peer set meanwhile and was answered ok for.
func (e *Engine) switchCandidate(sw candidateSwitch, now time.Time) {
	unlock, ok := e.lockObserved(sw.d.scope, sw.peer.PublicKey)
	if !ok {
		return // a request is changing the peer; the next round decides again
	}
	defer unlock()
	cur := e.currentPeer(sw.d.scope, sw.peer.PublicKey)
	moved := movedSinceRead(sw.d, sw.peer.PublicKey, sw.read)
	if cur == nil || cur.Endpoint != sw.peer.Endpoint || !slices.Equal(cur.Candidates, sw.peer.Candidates) || moved {
		// The trial's index counts the old record's candidates; the new
		// record's are tried from its first.
		e.locked(func() { delete(e.trials, sw.key) })
		if moved {
			// The switch may be due to a verdict that the relayed path
			// to the endpoint read is dead, taken after the request that
			// replaced that endpoint dropped the verdicts it knew of:
			// it is not about the endpoint the peer has now.
			e.natForgetPath(sw.d.scope, sw.peer.PublicKey)
		}
		return
	}
	e.locked(func() { e.trials[sw.key] = &trial{index: sw.index, since: now} })
	if sw.err != nil {
		e.log.Warn("candidate endpoint unusable", "peer", sw.peer.PublicKey, "candidate", sw.candidate, "err", sw.err)
		return
	}
	ka := time.Duration(max(cur.Keepalive, 5)) * time.Second
	pc := wgtypes.PeerConfig{PublicKey: mustKey(sw.peer.PublicKey), UpdateOnly: true, Endpoint: net.UDPAddrFromAddrPort(sw.addr), PersistentKeepaliveInterval: &ka}
	if sw.d.scope == scopeGlobal {
		e.natRoute(sw.key, sw.addr, sw.relay)
	}
	// e.resolved keeps the requested endpoint: a candidate that wins is
	// then told apart from it and reported like a learned endpoint.
	if err := e.applyPeers(sw.d.dev, sw.d.scope, []wgtypes.PeerConfig{pc}, nil, nil); err != nil {
		e.log.Warn("switching a peer to its next candidate", "peer", sw.peer.PublicKey, "err", err)
		return
	}
	e.log.Debug("trying candidate endpoint", "peer", sw.peer.PublicKey, "candidate", sw.addr, "relay", sw.relay)
}

// movedSinceRead reports whether peer pub's endpoint on d is no longer
// read, the one the monitor read: a request set another since. The
// monitor looks at a peer's record only after reading the whole device,
// so the record it judged the device by may already be one a request
// committed after the read, and the device's endpoint the one that
// request replaced. The device's reading has every change written since
// the read applied on top of it; the caller holds the peer's lock, so no
// request on the peer is half way. A reading that cannot tell counts as
// moved: the next round looks again.
func movedSinceRead(d scopedDevice, pub string, read netip.AddrPort) bool {
	now, ok := d.dev.seen.endpoint(mustKey(pub))
	return !ok || now != read
}

// lockObserved takes what the monitor needs to write a peer it looked at
// earlier: the peer, and for a service peer the service, because
// teardown_service_overlay removes the service's peers holding only the
// service. The caller holds the topology. A peer busy past the timeout is
// left to the next round, so one slow request does not stall the monitor.
func (e *Engine) lockObserved(scope, pub string) (unlock func(), ok bool) {
	keys := []string{peerLock(scope, pub)}
	if name, isSvc := strings.CutPrefix(scope, "service:"); isSvc {
		keys = append(keys, serviceLock(name))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unlock, err := e.locks.lock(ctx, keys...)
	return unlock, err == nil
}

// learnEndpoint keeps an endpoint WireGuard is using that we did not
// configure, so neither a reconcile nor an add_peer repeating the old
// endpoint fights it, and tells the main daemon.
func (e *Engine) learnEndpoint(d scopedDevice, p *store.Peer, endpoint string, read netip.AddrPort) {
	scope := d.scope
	unlock, ok := e.lockObserved(scope, p.PublicKey)
	if !ok {
		return // a request is changing the peer; the next round looks again
	}
	defer unlock()
	cur := e.currentPeer(scope, p.PublicKey)
	if cur == nil || cur.Endpoint != p.Endpoint || movedSinceRead(d, p.PublicKey, read) {
		// Changed by a request meanwhile: endpoint may be the one an
		// add_peer replaced after the device was read.
		return
	}
	e.at("learn.commit")
	next := *cur
	next.LearnedEndpoint = endpoint
	if err := e.store.Update(func(tx *store.Tx) error { return tx.PutPeer(next) }); err != nil {
		e.log.Warn("recording a learned endpoint", "peer", p.PublicKey, "err", err)
		return
	}
	var trying bool
	e.locked(func() {
		e.setPeersLocked(scope, p.PublicKey, &next, nil)
		_, trying = e.trials[peerKey(scope, p.PublicKey)]
		delete(e.trials, peerKey(scope, p.PublicKey))
	})
	if trying && next.Keepalive < 5 {
		// The trial raised the keepalive so handshakes were attempted;
		// the peer asked for less.
		ka := time.Duration(next.Keepalive) * time.Second
		pc := wgtypes.PeerConfig{PublicKey: mustKey(p.PublicKey), UpdateOnly: true, PersistentKeepaliveInterval: &ka}
		if err := e.applyPeers(d.dev, scope, []wgtypes.PeerConfig{pc}, nil, nil); err != nil {
			e.log.Warn("restoring a peer's keepalive after its candidate trial", "peer", p.PublicKey, "err", err)
		}
	}
	e.log.Info("peer endpoint changed", "peer", p.PublicKey, "scope", scope, "endpoint", endpoint, "requested", p.Endpoint)
	e.publish(protocol.NATEndpointChanged{Pubkey: p.PublicKey, Endpoint: endpoint})
}
