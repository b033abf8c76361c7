package engine

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
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
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-e.bgStop:
				return
			case <-t.C:
				e.checkPeers(time.Now())
			}
		}
	}()
}

func (e *Engine) publish(ev protocol.Event) {
	if e.cfg.Publish != nil {
		e.cfg.Publish(ev)
	}
}

type scopedDevice struct {
	scope string
	dev   wg.Device
}

// CheckPeers runs one monitor round now (tests).
func (e *Engine) CheckPeers() { e.checkPeers(time.Now()) }

func (e *Engine) checkPeers(now time.Time) {
	e.global.RLock()
	defer e.global.RUnlock()
	e.mu.Lock()
	var devs []scopedDevice
	if g := e.st.global; g != nil && g.dev != nil {
		devs = append(devs, scopedDevice{scopeGlobal, g.dev})
	}
	for name, svc := range e.st.services {
		if svc.dev != nil {
			devs = append(devs, scopedDevice{scopeService(name), svc.dev})
		}
	}
	e.mu.Unlock()
	seen := map[string]bool{}
	for _, d := range devs {
		snap, err := d.dev.Snapshot()
		if err != nil {
			e.log.Warn("reading peers for the health check", "device", d.dev.Name(), "err", err)
			continue
		}
		for _, p := range snap.Peers {
			key := peerKey(d.scope, p.PublicKey.String())
			seen[key] = true
			e.checkPeer(d, key, p, now)
		}
	}
	e.mu.Lock()
	for k := range e.health {
		if !seen[k] {
			delete(e.health, k)
		}
	}
	for k := range e.trials {
		if !seen[k] {
			delete(e.trials, k)
		}
	}
	for k := range e.rx {
		if !seen[k] {
			delete(e.rx, k)
		}
	}
	e.mu.Unlock()
}

func (e *Engine) checkPeer(d scopedDevice, key string, p wgtypes.Peer, now time.Time) {
	pub := p.PublicKey.String()
	e.mu.Lock()
	mark, seen := e.rx[key]
	if !seen || p.ReceiveBytes != mark.bytes {
		mark = rxMark{bytes: p.ReceiveBytes}
		if seen || p.ReceiveBytes > 0 {
			mark.at = now
		}
		e.rx[key] = mark
	}
	healthy := healthyAt(p.LastHandshakeTime, p.PersistentKeepaliveInterval, mark.at, now)
	was := e.health[key]
	e.health[key] = healthy
	var desired *store.Peer
	if cp := e.st.peers[key]; cp != nil {
		c := *cp
		desired = &c
	}
	tr := e.trials[key]
	configured := e.resolved[key]
	e.mu.Unlock()
	if healthy != was {
		e.log.Info("peer health changed", "peer", pub, "scope", d.scope, "healthy", healthy, "last_handshake", p.LastHandshakeTime)
		e.publish(protocol.PeerHealthChanged{Pubkey: pub, Healthy: healthy})
	}
	if desired == nil || desired.Guest {
		return
	}
	cur := ""
	if p.Endpoint != nil {
		cur = p.Endpoint.AddrPort().String()
	}
	cands := candidates(desired)
	if !healthy && len(cands) > 1 {
		e.tryNextCandidate(d, key, desired, cands, tr, now)
		return
	}
	// A handshake on an endpoint we did not configure: WireGuard learned
	// it (the peer roamed, or a NAT rebound its port), or a candidate won.
	if healthy && cur != "" && cur != desired.LearnedEndpoint && cur != configured {
		e.learnEndpoint(d, desired, cur)
	}
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

// tryNextCandidate moves an unhealthy peer to its next candidate endpoint
// once the current one had its chance to handshake.
func (e *Engine) tryNextCandidate(d scopedDevice, key string, p *store.Peer, cands []string, tr *trial, now time.Time) {
	if tr != nil && now.Sub(tr.since) < candidateTrialAfter {
		return
	}
	next := 0
	if tr != nil {
		next = (tr.index + 1) % len(cands)
	}
	ap, err := resolveEndpoint(context.Background(), cands[next])
	if err != nil {
		e.log.Warn("candidate endpoint unusable", "peer", p.PublicKey, "candidate", cands[next], "err", err)
		e.mu.Lock()
		e.trials[key] = &trial{index: next, since: now}
		e.mu.Unlock()
		return
	}
	k := mustKey(p.PublicKey)
	ka := time.Duration(max(p.Keepalive, 5)) * time.Second
	err = d.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: k, UpdateOnly: true, Endpoint: net.UDPAddrFromAddrPort(ap), PersistentKeepaliveInterval: &ka,
	}}})
	if err != nil {
		e.log.Warn("switching a peer to its next candidate", "peer", p.PublicKey, "err", err)
		return
	}
	// e.resolved keeps the requested endpoint: a candidate that wins is
	// then told apart from it and reported like a learned endpoint.
	e.mu.Lock()
	e.trials[key] = &trial{index: next, since: now}
	e.mu.Unlock()
	e.log.Debug("trying candidate endpoint", "peer", p.PublicKey, "candidate", ap)
}

// learnEndpoint keeps an endpoint WireGuard is using that we did not
// configure, so neither a reconcile nor an add_peer repeating the old
// endpoint fights it, and tells the main daemon.
func (e *Engine) learnEndpoint(d scopedDevice, p *store.Peer, endpoint string) {
	scope := d.scope
	unlock := e.peerLock(scope, p.PublicKey)
	defer unlock()
	e.mu.Lock()
	cur := e.st.peers[peerKey(scope, p.PublicKey)]
	e.mu.Unlock()
	if cur == nil || cur.Endpoint != p.Endpoint {
		return // changed by a request meanwhile
	}
	next := *cur
	next.LearnedEndpoint = endpoint
	if err := e.store.Update(func(tx *store.Tx) error { return tx.PutPeer(next) }); err != nil {
		e.log.Warn("recording a learned endpoint", "peer", p.PublicKey, "err", err)
		return
	}
	e.mu.Lock()
	e.st.peers[peerKey(scope, p.PublicKey)] = &next
	_, trying := e.trials[peerKey(scope, p.PublicKey)]
	delete(e.trials, peerKey(scope, p.PublicKey))
	e.mu.Unlock()
	if trying && next.Keepalive < 5 {
		// The trial raised the keepalive so handshakes were attempted;
		// the peer asked for less.
		ka := time.Duration(next.Keepalive) * time.Second
		if err := d.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: mustKey(p.PublicKey), UpdateOnly: true, PersistentKeepaliveInterval: &ka}}}); err != nil {
			e.log.Warn("restoring a peer's keepalive after its candidate trial", "peer", p.PublicKey, "err", err)
		}
	}
	e.log.Info("peer endpoint changed", "peer", p.PublicKey, "scope", scope, "endpoint", endpoint, "requested", p.Endpoint)
	e.publish(protocol.NATEndpointChanged{Pubkey: p.PublicKey, Endpoint: endpoint})
}

// noteResolved remembers the address a peer's requested endpoint resolved
// to, so the monitor can tell a learned endpoint from the configured one.
func (e *Engine) noteResolved(scope, pub string, ap netip.AddrPort) {
	e.mu.Lock()
	e.resolved[peerKey(scope, pub)] = ap.String()
	e.mu.Unlock()
}
