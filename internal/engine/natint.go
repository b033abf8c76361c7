package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/nat"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/conn"
)

// NATConfig turns on NAT traversal: STUN sent from the global device's
// WireGuard port, so the reflexive address found is the one peers must use,
// and a TURN relay for the peers no direct path reaches.
type NATConfig struct {
	// Servers are STUN servers ("host" or "host:port", default port 3478).
	// There are none by default: a cluster whose nodes are not behind NAT
	// needs none, and we do not call third parties unasked.
	Servers []string
	// TURN are TURN servers with their credentials (the daemon's flags);
	// a setup_global_overlay that carries turn_servers replaces them.
	TURN []nat.TURNServer
	// RefreshInterval is how often the reflexive address is refreshed
	// without waiting for a nat_tick (default 60 s, the reference's
	// stun_refresh_interval_secs; negative: only on nat_tick).
	RefreshInterval time.Duration
	// RelayCheckInterval is how often the TURN allocation is refreshed
	// and checked (default 15 s).
	RelayCheckInterval time.Duration
}

// natState is NAT traversal's part of the engine. Its mutex is a leaf
// lock (see the lock model): nothing slow happens under it, and the relay
// is started and stopped by natLoop, outside every lock.
type natState struct {
	cfg NATConfig

	mu        sync.Mutex
	bind      *nat.Bind // the global device's bind; nil before it exists
	result    nat.Result
	last      time.Time
	lastErr   string
	probing   bool
	refreshed chan struct{} // closed and replaced after every probe
	// probes numbers probes as they start; recorded is the number of
	// the last one recorded. Probes run concurrently (nat_tick, natLoop,
	// probeSoon): one that finishes after a later-started one recorded is
	// stale and ignored.
	probes, recorded uint64

	relay    *nat.Relay         // running on bind; nil without TURN
	relayFor []nat.TURNServer   // the configuration relay runs with
	relayed  netip.AddrPort     // the relayed address last reported
	paths    map[string]natPath // peerKey -> the path last reported
	// allocs is, per peer reached through our allocation, the relayed
	// address that allocation had; retry marks peers whose path went
	// stale (since when), tried again until a new handshake.
	allocs map[string]netip.AddrPort
	retry  map[string]time.Time
	// routes is, per peer, the address a candidate trial marked on the
	// bind as reached through the relay (see natRoute). Written only
	// under the peer's lock.
	routes map[string]netip.AddrPort

	loop sync.Once
	kick chan struct{} // wakes natLoop to follow the global overlay
}

// natPath is how a peer is reached.
type natPath struct {
	path, relay string
}

func (e *Engine) enableNAT(cfg NATConfig) {
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = 60 * time.Second
	}
	e.nat = &natState{cfg: cfg, refreshed: make(chan struct{}), paths: map[string]natPath{}, allocs: map[string]netip.AddrPort{}, retry: map[string]time.Time{}, routes: map[string]netip.AddrPort{}, kick: make(chan struct{}, 1)}
	e.hooks.statusExtra = append(e.hooks.statusExtra, e.natStatus)
}

// turnServers are the TURN servers for a global overlay record: the
// request's, else the flags'.
func (e *Engine) turnServers(rec store.Global) []nat.TURNServer {
	if len(rec.TURNServers) > 0 {
		out := make([]nat.TURNServer, len(rec.TURNServers))
		for i, t := range rec.TURNServers {
			out[i] = nat.TURNServer{Address: t.Address, Username: t.Username, Credential: t.Credential}
		}
		return out
	}
	return e.nat.cfg.TURN
}

// parseTURNServers validates a request's turn_servers (without quoting
// credentials) and turns them into store records.
func parseTURNServers(in []protocol.TURNServerConfig) ([]store.TURNServer, error) {
	if len(in) > 16 {
		return nil, fmt.Errorf("turn_servers has %d entries; at most 16 are allowed", len(in))
	}
	var out []store.TURNServer
	for i, t := range in {
		s := nat.TURNServer{Address: t.Address, Username: t.Username, Credential: t.Credential}
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("turn_servers[%d]: %w", i, err)
		}
		if len(t.Username) > 512 || len(t.Credential) > 512 {
			return nil, fmt.Errorf("turn_servers[%d]: username and credential are limited to 512 bytes each", i)
		}
		out = append(out, store.TURNServer{Address: t.Address, Username: t.Username, Credential: t.Credential})
	}
	return out, nil
}

// globalBind is the conn.Bind for a new global device: with STUN or TURN
// servers configured it is a demultiplexing bind; otherwise nil
// (wireguard-go's own, which keeps its route listener for multi-homed
// nodes). It does not become NAT traversal's bind here: the device may
// fail to open, or its setup to commit, and then the device that stays
// keeps its own. natUseBind switches once the device is published.
func (e *Engine) globalBind(rec store.Global) conn.Bind {
	if e.nat == nil {
		return nil
	}
	if len(e.nat.cfg.Servers) == 0 && len(e.turnServers(rec)) == 0 {
		return nil
	}
	return nat.NewBind(nil, e.log.With("component", "nat"))
}

// natUseBind makes the bind of dev, the global device just published,
// the one STUN, relay routes and the TURN relay use: none when dev has
// wireguard-go's own (the old device's is closed with it).
func (e *Engine) natUseBind(dev *device) {
	if e.nat == nil {
		return
	}
	b, _ := dev.bind.(*nat.Bind)
	e.nat.mu.Lock()
	e.nat.bind = b
	e.nat.mu.Unlock()
}

// natTick refreshes the node's reflexive endpoint(s). It answers within a
// few seconds whatever the STUN servers do: the main daemon waits for it.
func (e *Engine) natTick(ctx context.Context) (protocol.Response, error) {
	var g *globalState
	e.locked(func() { g = e.st.global })
	if g == nil || !g.rec.NATEnabled || e.nat == nil || len(e.nat.cfg.Servers) == 0 {
		return protocol.OK{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	if err := e.probeNAT(ctx); err != nil {
		return nil, fmt.Errorf("NAT maintenance tick failed: %w", err)
	}
	return protocol.OK{}, nil
}

// probeNAT asks every STUN server for our reflexive address from the
// WireGuard port and records what it learned.
func (e *Engine) probeNAT(ctx context.Context) error {
	n := e.nat
	n.mu.Lock()
	b := n.bind
	n.probes++
	seq := n.probes
	n.mu.Unlock()
	if b == nil {
		return errors.New("the global device has no NAT-traversal bind yet")
	}
	servers, rerr := nat.ResolveServers(ctx, n.cfg.Servers)
	if len(servers) == 0 {
		n.record(seq, nat.Result{}, rerr)
		return rerr
	}
	res, err := b.Probe(ctx, servers)
	if err == nil && rerr != nil {
		res.Errors = append(res.Errors, rerr)
	}
	e.at("nat.probed")
	prev, current := n.record(seq, res, err)
	if err != nil {
		e.log.Warn("STUN probe failed", "err", err)
		return err
	}
	if !current {
		// A probe started after this one has already recorded its
		// answer: this one's is older, and announcing it would undo it.
		e.log.Debug("STUN probe outrun by a newer one; its answer is dropped", "endpoints", res.Reflexive)
		return nil
	}
	if !slices.Equal(prev, res.Reflexive) {
		e.log.Info("reflexive endpoint", "endpoints", res.Reflexive, "nat", res.Behaviour, "previous", prev)
		for _, r := range res.Reflexive {
			if !slices.Contains(prev, r) {
				e.publishOwnEndpoint(r, "reflexive")
			}
		}
	}
	return nil
}

// publishOwnEndpoint tells the main daemon one of this node's own
// addresses changed, as a nat_endpoint_changed for our own key: an event
// kind the reference's client already decodes (a new kind would break a
// client that decodes events strictly).
func (e *Engine) publishOwnEndpoint(ap netip.AddrPort, candidate string) {
	var pub string
	e.locked(func() {
		if e.st.global != nil {
			pub = e.st.key.PublicKey().String()
		}
	})
	if pub != "" {
		e.natPublish(protocol.NATEndpointChanged{Pubkey: pub, Endpoint: ap.String(), Candidate: candidate})
	}
}

// natPublish pushes an event (natint is below the monitor, whose publish
// does the same).
func (e *Engine) natPublish(ev protocol.Event) {
	if e.cfg.Publish != nil {
		e.cfg.Publish(ev)
	}
}

// record keeps what probe seq learned, unless a probe started after it
// has been recorded already (then current is false and nothing is kept).
// prev is the reflexive endpoints it replaced, read in the same critical
// section, so that of two probes finishing together only the one that
// changed them announces the change.
func (n *natState) record(seq uint64, res nat.Result, err error) (prev []netip.AddrPort, current bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.refreshed)
	n.refreshed = make(chan struct{})
	if seq < n.recorded {
		return nil, false
	}
	n.recorded = seq
	prev = n.result.Reflexive
	if err == nil {
		n.result = res
		n.lastErr = ""
		if len(res.Errors) > 0 {
			n.lastErr = errors.Join(res.Errors...).Error()
		}
	} else {
		n.lastErr = err.Error()
	}
	n.last = time.Now()
	return prev, true
}

// natFollowGlobal is called after the global overlay came up, changed or
// went away: the NAT loop (started on first use) brings the relay in line
// with it and probes, outside every lock.
func (e *Engine) natFollowGlobal() {
	if e.nat == nil {
		return
	}
	e.nat.loop.Do(func() {
		e.goBackground(e.natLoop)
	})
	select {
	case e.nat.kick <- struct{}{}:
	default:
	}
	e.probeSoon()
}

// natLoop refreshes the reflexive address every RefreshInterval without
// waiting for nat_tick, and starts, replaces and stops the TURN relay as
// the global overlay's record says. It owns the relay's lifecycle, so no
// request or pass waits for a relay to start or stop.
func (e *Engine) natLoop() {
	n := e.nat
	var tick <-chan time.Time
	if n.cfg.RefreshInterval > 0 {
		t := time.NewTicker(n.cfg.RefreshInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		e.followRelay()
		select {
		case <-e.bgCtx.Done():
			e.setRelay(nil, nil, nil)
			return
		case <-n.kick:
		case <-tick:
			if e.natEnabled() && len(n.cfg.Servers) > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				e.probeNAT(ctx)
				cancel()
			}
		}
	}
}

func (e *Engine) natEnabled() bool {
	var on bool
	e.locked(func() { on = e.st.global != nil && e.st.global.rec.NATEnabled })
	return on
}

// followRelay runs a relay on the global device's bind when NAT traversal
// is on and TURN servers are configured, with those servers; otherwise
// none.
func (e *Engine) followRelay() {
	var rec store.Global
	var up bool
	e.locked(func() {
		if g := e.st.global; g != nil && g.dev != nil {
			rec, up = g.rec, true
		}
	})
	n := e.nat
	n.mu.Lock()
	b, cur, curFor := n.bind, n.relay, n.relayFor
	n.mu.Unlock()
	var servers []nat.TURNServer
	if up && rec.NATEnabled {
		servers = e.turnServers(rec)
		if b == nil && len(servers) > 0 {
			e.log.Warn("TURN servers are configured, but the global device was created without NAT traversal's socket; they take effect when the daemon restarts")
			servers = nil
		}
	}
	if len(servers) == 0 {
		if cur != nil {
			e.setRelay(nil, nil, nil)
			e.log.Info("TURN relay stopped")
		}
		return
	}
	if cur != nil && slices.Equal(curFor, servers) && b.Relay() == cur {
		return
	}
	r, err := nat.NewRelay(nat.RelayConfig{
		Servers:       servers,
		Log:           e.log.With("component", "turn"),
		CheckInterval: n.cfg.RelayCheckInterval,
		OnChange:      e.relayChanged,
	})
	if err != nil {
		e.log.Warn("TURN relay not started", "err", err)
		e.setRelay(nil, nil, nil)
		return
	}
	e.setRelay(b, r, servers)
	r.Start()
}

// setRelay makes r (on b) the relay, closing the previous one.
func (e *Engine) setRelay(b *nat.Bind, r *nat.Relay, servers []nat.TURNServer) {
	n := e.nat
	n.mu.Lock()
	old := n.relay
	n.relay, n.relayFor = r, servers
	if r == nil {
		n.relayed = netip.AddrPort{}
	}
	n.mu.Unlock()
	if old != nil {
		// Detach from whichever bind holds it, then release its
		// allocation.
		if ob := e.natBind(); ob != nil && ob.Relay() == old {
			ob.AttachRelay(nil)
		}
		old.Close()
	}
	if b != nil && r != nil {
		b.AttachRelay(r)
	}
}

// natBind is nil without NAT traversal (Config.NAT nil) too: a candidate
// switch routes through it whether or not NAT is configured.
func (e *Engine) natBind() *nat.Bind {
	if e.nat == nil {
		return nil
	}
	e.nat.mu.Lock()
	defer e.nat.mu.Unlock()
	return e.nat.bind
}

// relayChanged runs on the relay's goroutine after its allocation was
// made, lost or moved: log it, and tell the main daemon of a new relayed
// address, which it passes on to the other nodes as a candidate.
func (e *Engine) relayChanged() {
	n := e.nat
	n.mu.Lock()
	r := n.relay
	n.mu.Unlock()
	if r == nil {
		return
	}
	st := r.Status()
	n.mu.Lock()
	prev := n.relayed
	n.relayed = st.Relayed
	n.mu.Unlock()
	if st.Relayed == prev {
		return
	}
	if !st.Relayed.IsValid() {
		e.log.Warn("no TURN relay: peers that need it are unreachable until a server grants an allocation", "previous", prev)
		return
	}
	e.log.Info("relayed endpoint", "relayed", st.Relayed, "server", st.Server, "previous", prev)
	e.publishOwnEndpoint(st.Relayed, "relay")
}

// probeSoon runs one probe in the background (after the global device came
// up), so status shows the reflexive endpoint without waiting for the main
// daemon's first nat_tick.
func (e *Engine) probeSoon() {
	if e.nat == nil || len(e.nat.cfg.Servers) == 0 || !e.natEnabled() {
		return
	}
	e.nat.mu.Lock()
	if e.nat.probing {
		e.nat.mu.Unlock()
		return
	}
	e.nat.probing = true
	e.nat.mu.Unlock()
	started := e.goBackground(func() {
		defer func() {
			e.nat.mu.Lock()
			e.nat.probing = false
			e.nat.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// The bind opens once the device's link is up.
		for {
			if _, open := e.natBindPort(); open {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-e.bgCtx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		e.probeNAT(ctx)
	})
	if !started {
		e.nat.mu.Lock()
		e.nat.probing = false
		e.nat.mu.Unlock()
	}
}

func (e *Engine) natBindPort() (uint16, bool) {
	b := e.natBind()
	if b == nil {
		return 0, false
	}
	return b.Port()
}

// relayView is what path decisions need of the relay, read once per
// monitor round.
type relayView struct {
	bind      *nat.Bind
	relay     *nat.Relay
	allocated bool
	relayed   netip.AddrPort // our relayed address
	server    string         // the server our allocation is on
	ips       []netip.Addr   // where relayed addresses live
	servers   []string       // configured server addresses
}

func (e *Engine) relayView() relayView {
	if e.nat == nil {
		return relayView{}
	}
	n := e.nat
	n.mu.Lock()
	v := relayView{bind: n.bind, relay: n.relay}
	for _, s := range n.relayFor {
		v.servers = append(v.servers, s.Address)
	}
	n.mu.Unlock()
	if v.relay != nil {
		st := v.relay.Status()
		v.allocated, v.relayed, v.server = st.Relayed.IsValid(), st.Relayed, st.Server
		v.ips = v.relay.ServerIPs()
	}
	return v
}

// isRelayed reports whether ap is a relayed transport address: on one of
// the TURN servers this node knows.
func (v relayView) isRelayed(ap netip.AddrPort) bool {
	return slices.Contains(v.ips, ap.Addr().Unmap())
}

// pathTo is how WireGuard's packets to endpoint travel: through our
// allocation, to a peer's relayed address (a relay all the same), or
// directly.
func (v relayView) pathTo(endpoint netip.AddrPort) natPath {
	if v.bind == nil || !endpoint.IsValid() {
		return natPath{}
	}
	if v.bind.PathTo(endpoint) == nat.PathRelay {
		return natPath{protocol.PathRelay, v.server}
	}
	if v.isRelayed(endpoint) {
		server := endpoint.Addr().String()
		if len(v.servers) == 1 {
			server = v.servers[0]
		}
		return natPath{protocol.PathRelay, server}
	}
	return natPath{path: protocol.PathDirect}
}

// natTrial is one way to try a peer: an endpoint, directly or through
// our allocation.
type natTrial struct {
	endpoint string
	relay    bool
}

// natTrials lists the ways to try a peer whose endpoints are cands
// (requested first): each directly, then — with an allocation — each
// through the relay, relayed addresses first (relay to relay).
func (e *Engine) natTrials(scope string, cands []string, v relayView) []natTrial {
	out := make([]natTrial, 0, 2*len(cands))
	for _, c := range cands {
		out = append(out, natTrial{endpoint: c})
	}
	if scope != scopeGlobal || !v.allocated {
		return out
	}
	var relayed, other []natTrial
	for _, c := range cands {
		if ap, err := netip.ParseAddrPort(c); err == nil && v.isRelayed(ap) {
			relayed = append(relayed, natTrial{endpoint: c, relay: true})
		} else {
			other = append(other, natTrial{endpoint: c, relay: true})
		}
	}
	return append(append(out, relayed...), other...)
}

// direct lists the literal endpoints among cands that are not relayed
// addresses: where copies of handshake initiations go while a peer is
// on a relay.
func (v relayView) direct(cands []string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, c := range cands {
		if ap, err := netip.ParseAddrPort(c); err == nil && !v.isRelayed(ap) {
			out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
	}
	return out
}

// natRoute tells the bind whether the next endpoint WireGuard is given
// for addr, peer key's next candidate, goes through the relay. Called
// just before the endpoint is set, holding the peer's lock (the bind has
// its own). The bind keeps a route per address, not per peer, so the
// peer's previous route is dropped here and its last one when a request
// removes the peer or sets its endpoint (natForgetPath).
func (e *Engine) natRoute(key string, addr netip.AddrPort, relay bool) {
	b := e.natBind()
	if b == nil {
		return
	}
	n := e.nat
	n.mu.Lock()
	old, had := n.routes[key]
	if relay {
		n.routes[key] = addr
	} else {
		delete(n.routes, key)
	}
	n.mu.Unlock()
	if had && old != addr {
		b.UseRelay(old, false)
	}
	b.UseRelay(addr, relay)
}

// natForgetPath drops what NAT traversal concluded about the path to a
// global peer's endpoint: the relay route its candidate trial left, the
// verdict that its relayed path is dead (natStale) and the allocation the
// path went through. Each was about the endpoint the device had, and is
// wrong for another. Called holding the peer's lock: by a request that
// removes the peer or sets its endpoint, which is tried directly first as
// every requested endpoint is (otherwise the address stays relayed on the
// bind, and a peer added at it later, or this one given it again, is put
// on the relay by the trial of a record the main daemon replaced); and by
// the monitor when it finds the peer moved since it read the device.
func (e *Engine) natForgetPath(scope, pub string) {
	if e.nat == nil || scope != scopeGlobal {
		return
	}
	n := e.nat
	key := peerKey(scope, pub)
	n.mu.Lock()
	addr, routed := n.routes[key]
	delete(n.routes, key)
	delete(n.retry, key)
	delete(n.allocs, key)
	b := n.bind
	n.mu.Unlock()
	if routed && b != nil {
		b.UseRelay(addr, false)
	}
}

// natPeerPath records how a healthy global peer is reached, pushes a
// nat_endpoint_changed (with the path) when that changes, and keeps
// handshake copies going to the peer's direct addresses while it is on a
// relay. It reports whether the endpoint is relayed: such an endpoint is
// not kept as learned (it dies with the allocation).
func (e *Engine) natPeerPath(key, pub string, endpoint netip.AddrPort, healthy bool, direct []netip.AddrPort, v relayView) bool {
	if v.bind == nil {
		return false
	}
	p := v.pathTo(endpoint)
	if p.path == protocol.PathRelay {
		v.bind.SetProbes(endpoint, direct)
	}
	if !healthy || p.path == "" {
		return p.path == protocol.PathRelay
	}
	n := e.nat
	n.mu.Lock()
	last, seen := n.paths[key]
	n.paths[key] = p
	if v.bind.PathTo(endpoint) == nat.PathRelay {
		if _, retrying := n.retry[key]; !retrying {
			n.allocs[key] = v.relayed
		}
	} else {
		delete(n.allocs, key)
	}
	n.mu.Unlock()
	if !seen {
		last = natPath{path: protocol.PathDirect}
	}
	if last != p {
		e.log.Info("peer path changed", "peer", pub, "path", p.path, "relay", p.relay, "endpoint", endpoint, "previous", last.path)
		e.natPublish(protocol.NATEndpointChanged{Pubkey: pub, Endpoint: endpoint.String(), Path: p.path, Relay: p.relay})
	}
	return p.path == protocol.PathRelay
}

// natStale reports whether a peer's relayed path is dead for sure, though
// the peer may still count as healthy for a while: our allocation it went
// through was replaced (the server restarted), or it goes to a relayed
// address the peer no longer lists (its allocation was replaced). Such a
// peer is tried again, candidate by candidate, until a handshake newer
// than the verdict completes.
func (e *Engine) natStale(key string, endpoint netip.AddrPort, cands []string, handshake time.Time, v relayView) bool {
	if v.bind == nil {
		return false
	}
	n := e.nat
	n.mu.Lock()
	defer n.mu.Unlock()
	if since, ok := n.retry[key]; ok {
		if handshake.After(since) {
			delete(n.retry, key)
			return false
		}
		return true
	}
	if !endpoint.IsValid() {
		return false
	}
	why := ""
	if at, ok := n.allocs[key]; ok && v.bind.PathTo(endpoint) == nat.PathRelay && at != v.relayed {
		why = "our TURN allocation was replaced"
	} else if v.isRelayed(endpoint) && !slices.Contains(v.direct(cands), endpoint) && !slices.ContainsFunc(cands, func(c string) bool {
		ap, err := netip.ParseAddrPort(c)
		return err == nil && netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) == endpoint
	}) {
		why = "the peer's relayed address is no longer among its candidates"
	}
	if why == "" {
		return false
	}
	n.retry[key] = time.Now()
	e.log.Info("relayed path gone; trying the peer's candidates again", "peer", key, "endpoint", endpoint, "why", why)
	return true
}

// natAfterRound lets the relay accept packets from every address a global
// peer may send from (permissions are per IP), and forgets the paths and
// probes of peers and endpoints that are gone.
func (e *Engine) natAfterRound(seen map[string]bool, endpoints map[netip.AddrPort]bool, v relayView) {
	if e.nat == nil {
		return
	}
	n := e.nat
	n.mu.Lock()
	keepOnly(n.paths, seen)
	keepOnly(n.allocs, seen)
	keepOnly(n.retry, seen)
	n.mu.Unlock()
	if v.bind != nil {
		v.bind.PruneProbes(func(ap netip.AddrPort) bool { return endpoints[ap] })
		v.bind.PrunePaths(func(ap netip.AddrPort) bool { return endpoints[ap] })
	}
	if v.relay == nil {
		return
	}
	var ips []netip.Addr
	e.locked(func() {
		for k, p := range e.st.peers {
			if p.Scope != scopeGlobal {
				continue
			}
			for _, c := range append([]string{p.Endpoint, p.LearnedEndpoint}, p.Candidates...) {
				if ap, err := netip.ParseAddrPort(c); err == nil {
					ips = append(ips, ap.Addr().Unmap())
				}
			}
			if r, ok := e.resolved[k]; ok {
				ips = append(ips, r.addr.Addr())
			}
		}
	})
	for ap := range endpoints {
		ips = append(ips, ap.Addr())
	}
	v.relay.Permit(ips)
}

// natStatus adds NAT traversal to status: reflexive and relayed
// addresses, the TURN servers' state (never their credentials), and each
// global peer's path.
func (e *Engine) natStatus(s *protocol.StatusSnapshot) {
	var enabled bool
	var rec store.Global
	e.locked(func() {
		if g := e.st.global; g != nil {
			enabled, rec = g.rec.NATEnabled, g.rec
		}
	})
	n := e.nat
	turn := e.turnServers(rec)
	n.mu.Lock()
	ns := &protocol.NATStatus{Enabled: enabled && (len(n.cfg.Servers) > 0 || len(turn) > 0), STUNServers: n.cfg.Servers, Behaviour: n.result.Behaviour, LastError: n.lastErr}
	for _, r := range n.result.Reflexive {
		ns.ReflexiveAddrs = append(ns.ReflexiveAddrs, r.String())
	}
	if !n.last.IsZero() {
		ns.LastRefreshUnix = n.last.Unix()
	}
	if n.cfg.RefreshInterval > 0 {
		ns.RefreshIntervalSecs = int64(n.cfg.RefreshInterval / time.Second)
	}
	relay := n.relay
	n.mu.Unlock()
	if e.fw != nil {
		ns.Masquerade = e.fw.cfg.Masquerade
	}
	if relay != nil {
		st := relay.Status()
		if st.Relayed.IsValid() {
			ns.RelayAddrs = append(ns.RelayAddrs, st.Relayed.String())
		}
		for _, ss := range st.Servers {
			ts := protocol.TURNServerStatus{Address: ss.Address, State: ss.State, LastError: ss.LastError, Failures: ss.Failures}
			if ss.State == nat.TURNAllocated {
				ts.Relayed = st.Relayed.String()
			}
			if !ss.RetryAt.IsZero() {
				ts.RetryUnix = ss.RetryAt.Unix()
			}
			ns.TURNServers = append(ns.TURNServers, ts)
		}
	} else if enabled {
		for _, t := range turn {
			ns.TURNServers = append(ns.TURNServers, protocol.TURNServerStatus{Address: t.Address, State: nat.TURNStandby})
		}
	}
	s.NAT = ns
	v := e.relayView()
	if v.bind == nil {
		return
	}
	for i := range s.Peers {
		ap, err := netip.ParseAddrPort(s.Peers[i].Endpoint)
		if err != nil {
			continue
		}
		p := v.pathTo(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		s.Peers[i].Path, s.Peers[i].Relay = p.path, p.relay
	}
}
