package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The device applier: the one place that changes a WireGuard device, its
// addresses and the routes into it. See the lock model in engine.go.

// device is one WireGuard device and the lock that serialises every change
// to it: a request's and a reconcile pass's alike.
type device struct {
	mu sync.Mutex
	wg wg.Device
	// bind is the UDP bind the device was opened with (nil: the
	// backend's own).
	bind conn.Bind
	// seen is the device as last read plus the changes written since:
	// what status answers from.
	seen reading
}

func (d *device) Name() string { return d.wg.Name() }

// read reads the whole device and keeps the reading.
func (d *device) read() (*wgtypes.Device, error) {
	token := d.seen.begin()
	at := time.Now()
	snap, err := d.wg.Snapshot()
	d.seen.finish(token, snap, at, time.Since(at))
	return snap, err
}

// configure writes cfg to the device and to the reading; every change to
// a device goes through here.
func (d *device) configure(cfg wgtypes.Config) error {
	if err := d.wg.Configure(cfg); err != nil {
		d.seen.forget()
		return err
	}
	d.seen.apply(cfg)
	return nil
}

// peerStatuses is the device's peers as status shows them (without what
// the desired state adds: health, learned endpoints), as of at most
// maxAge ago: for a big device the reading when it is that recent, else a
// new read. It also returns the listen port and when the counters were
// read.
func (d *device) peerStatuses(maxAge time.Duration) ([]protocol.PeerStatus, int, time.Time, error) {
	now := time.Now()
	if d.seen.big() {
		if peers, port, at, ok := d.seen.recentStatuses(maxAge, now); ok {
			return peers, port, at, nil
		}
	}
	snap, err := d.read()
	if err != nil {
		return nil, 0, time.Time{}, err
	}
	peers := make([]protocol.PeerStatus, len(snap.Peers))
	for i := range snap.Peers {
		peers[i] = peerStatus(&snap.Peers[i])
	}
	return peers, snap.ListenPort, now, nil
}

// deviceSpec is everything one WireGuard device should be.
type deviceSpec struct {
	name   string
	key    wgtypes.Key
	port   uint16
	addrs  []netip.Prefix
	peers  []store.Peer
	routes []netip.Prefix // destinations routed into the device besides the addresses' own
	// bind carries a new device's UDP traffic (userspace only); nil is
	// wireguard-go's own. The global device gets NAT traversal's.
	bind conn.Bind
}

var errNoBackend = errors.New("no WireGuard backend is configured in this daemon")

// openDevice creates (or adopts) a device and brings it to spec, every
// peer with its endpoint. On error nothing of it is left. Until the caller
// publishes the device in the state nobody else can reach it.
func (e *Engine) openDevice(spec deviceSpec) (*device, error) {
	if e.cfg.WG == nil || e.cfg.Net == nil {
		return nil, errNoBackend
	}
	opts := wg.Options{MTU: e.cfg.MTU, Logger: e.log.With("device", spec.name), Bind: spec.bind, Owner: e.aliasPrefix()}
	dev, err := e.cfg.WG.Open(spec.name, opts)
	if err != nil {
		return nil, err
	}
	d := &device{wg: dev, bind: spec.bind}
	if _, err := e.syncDevice(d, func() deviceSpec { return spec }); err != nil {
		dev.Close()
		return nil, err
	}
	if err := e.cfg.Net.SetAlias(spec.name, e.linkAlias("wireguard", spec.name)); err != nil {
		dev.Close()
		return nil, err
	}
	return d, nil
}

// syncDevice brings d to the spec that spec() derives from the desired
// state, which it reads holding d's lock. It writes only what differs:
// key and port when they changed; peers the device lacks (with their
// endpoints), peers it should not have, and peers whose allowed IPs or
// keepalive differ (never the endpoint of a peer it has: WireGuard may
// have learned a better one); then addresses, MTU, link up, and routes.
// A device that already matches is not written at all. It returns the
// number of changes.
func (e *Engine) syncDevice(d *device, spec func() deviceSpec) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sp := spec()
	e.at("device.sync")
	snap, err := d.read()
	if err != nil {
		return 0, err
	}
	changes := 0
	var cfg wgtypes.Config
	if snap.PrivateKey != sp.key {
		cfg.PrivateKey = &sp.key
		changes++
	}
	if port := int(sp.port); snap.ListenPort != port {
		cfg.ListenPort = &port
		changes++
	}
	want := make([]wgtypes.PeerConfig, 0, len(sp.peers))
	for _, p := range sp.peers {
		pc, err := e.peerConfig(p, true)
		if err != nil {
			e.log.Warn("peer left out of the device", "device", sp.name, "peer", p.PublicKey, "err", err)
			continue
		}
		want = append(want, pc)
	}
	cfg.Peers = wg.PeerChanges(want, snap.Peers)
	changes += len(cfg.Peers)
	if cfg.PrivateKey != nil || cfg.ListenPort != nil || len(cfg.Peers) > 0 {
		if err := d.configure(cfg); err != nil {
			return 0, fmt.Errorf("configure %s: %w", sp.name, err)
		}
	}
	if err := e.cfg.Net.SetMTU(sp.name, e.cfg.MTU); err != nil {
		return changes, err
	}
	if err := e.cfg.Net.EnsureAddrs(sp.name, sp.addrs); err != nil {
		return changes, err
	}
	if err := e.cfg.Net.SetUp(sp.name); err != nil {
		return changes, err
	}
	n, err := e.syncRoutes(sp.name, sp.routes)
	return changes + n, err
}

// applyPeers writes the peer changes of a committed request to d and
// adds and removes the routes they need, holding d's lock. next and prev
// are the peer's record after and before the request (nil: absent).
func (e *Engine) applyPeers(d *device, scope string, peers []wgtypes.PeerConfig, next, prev *store.Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(peers) > 0 {
		if err := d.configure(wgtypes.Config{Peers: peers}); err != nil {
			return fmt.Errorf("configure %s: %w", d.Name(), err)
		}
	}
	return e.syncPeerRoutes(scope, d.Name(), next, prev)
}

// syncRoutes makes the routes through dev exactly want (besides the routes
// the kernel derives from the device's addresses). Called under the
// device's lock.
func (e *Engine) syncRoutes(dev string, want []netip.Prefix) (int, error) {
	have, err := e.cfg.Net.Routes(dev)
	if err != nil {
		return 0, err
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p.Masked()] = true
	}
	changes := 0
	present := map[netip.Prefix]bool{}
	for _, r := range have {
		present[r.Dst.Masked()] = true
		if !wanted[r.Dst.Masked()] {
			if err := e.cfg.Net.DeleteRoute(r); err != nil {
				return changes, err
			}
			changes++
		}
	}
	for p := range wanted {
		if present[p] {
			continue
		}
		if err := e.cfg.Net.EnsureRoute(linuxnet.Route{Dst: p, Dev: dev, Scope: linuxnet.ScopeLink}); err != nil {
			return changes, err
		}
		changes++
	}
	return changes, nil
}

// syncPeerRoutes adds the routes a peer's allowed IPs need and removes the
// ones only its previous version needed. Called under the device's lock,
// after the state holds the change.
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
	stillNeeded := map[netip.Prefix]bool{}
	e.locked(func() {
		for _, p := range e.st.peers {
			if p.Scope != scope || p.PublicKey == pubOf(next, prev) {
				continue
			}
			for _, r := range peerRoutes([]store.Peer{*p}, covered) {
				stillNeeded[r] = true
			}
		}
	})
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
func (e *Engine) coveredFor(scope string) (out []netip.Prefix) {
	e.locked(func() {
		if scope == scopeGlobal {
			out = []netip.Prefix{e.st.cluster}
			return
		}
		for _, svc := range e.st.services {
			if scopeService(svc.rec.Name) == scope {
				out = append([]netip.Prefix{netip.PrefixFrom(svc.gateway, svc.gateway.BitLen())}, svc.subnets()...)
				return
			}
		}
	})
	return out
}

func mustKey(b64 string) wgtypes.Key {
	k, _ := wg.ParseKey(b64)
	return k
}

// peerConfig turns a stored peer into a full wgctrl peer configuration.
// withEndpoint includes the endpoint: the learned one when WireGuard
// learned one, else the requested one as last resolved. It does no I/O: a
// host name nobody has resolved yet (resolveEndpoints does that, outside
// every lock) is left out, and the peer is reached once it contacts us or
// a later pass has the address.
func (e *Engine) peerConfig(p store.Peer, withEndpoint bool) (wgtypes.PeerConfig, error) {
	key, err := wg.ParseKey(p.PublicKey)
	if err != nil {
		return wgtypes.PeerConfig{}, err
	}
	pc := wgtypes.PeerConfig{PublicKey: key, ReplaceAllowedIPs: true}
	for _, c := range p.AllowedIPs {
		pf, err := netip.ParsePrefix(c)
		if err != nil {
			return wgtypes.PeerConfig{}, fmt.Errorf("allowed IP %q: %w", c, err)
		}
		pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: pf.Addr().AsSlice(), Mask: net.CIDRMask(pf.Bits(), pf.Addr().BitLen())})
	}
	ka := time.Duration(p.Keepalive) * time.Second
	pc.PersistentKeepaliveInterval = &ka
	if !withEndpoint {
		return pc, nil
	}
	if p.LearnedEndpoint != "" {
		if ap, err := netip.ParseAddrPort(p.LearnedEndpoint); err == nil {
			pc.Endpoint = net.UDPAddrFromAddrPort(ap)
			return pc, nil
		}
	}
	if p.Endpoint != "" {
		if ap, ok := e.endpointOf(p.Scope, p.PublicKey, p.Endpoint); ok {
			pc.Endpoint = net.UDPAddrFromAddrPort(ap)
		}
	}
	return pc, nil
}

// resolvedEndpoint is what a peer's requested endpoint resolved to.
type resolvedEndpoint struct {
	endpoint string
	addr     netip.AddrPort
}

// endpointOf is the address of a peer's requested endpoint: the literal
// itself, or what it last resolved to. It records the address, so the
// health monitor can tell an endpoint WireGuard learned from this one.
func (e *Engine) endpointOf(scope, pub, endpoint string) (ap netip.AddrPort, ok bool) {
	if lit, err := netip.ParseAddrPort(endpoint); err == nil {
		ap, ok = netip.AddrPortFrom(lit.Addr().Unmap(), lit.Port()), true
	}
	key := peerKey(scope, pub)
	e.locked(func() {
		if !ok {
			if r, found := e.resolved[key]; found && r.endpoint == endpoint {
				ap, ok = r.addr, true
			}
			return
		}
		e.noteResolvedLocked(key, endpoint, ap)
	})
	return ap, ok
}

// noteResolvedLocked records what a peer's requested endpoint resolved to,
// but only while the peer still requests that endpoint: callers looked the
// record up earlier, with no lock held, and an add_peer that moved the peer
// since recorded its own endpoint's address when it committed (see
// setPeersLocked). Without the check an older address would stand for the
// acknowledged endpoint, and the health monitor would take the device's
// endpoint for one WireGuard learned. Called with e.mu held.
func (e *Engine) noteResolvedLocked(key, endpoint string, ap netip.AddrPort) {
	if p := e.st.peers[key]; p != nil && p.Endpoint == endpoint {
		e.resolved[key] = resolvedEndpoint{endpoint, ap}
	}
}

// resolveWorkers caps the lookups resolveEndpoints runs at once.
const resolveWorkers = 16

// resolveEndpoints resolves the host-name endpoints of peers that have no
// address for them yet. It is called before any lock is taken: a name can
// take seconds to resolve, and nothing may wait for that. The names are
// looked up side by side: one after another, a resolver that does not
// answer cost every name its whole timeout, and a node with a few dozen
// named peers then spent minutes in a pass (or in its restore at start,
// before it served anyone) doing nothing else.
func (e *Engine) resolveEndpoints(ctx context.Context, peers []store.Peer) {
	var named []store.Peer
	for _, p := range peers {
		if p.Endpoint == "" || p.LearnedEndpoint != "" {
			continue
		}
		if _, err := netip.ParseAddrPort(p.Endpoint); err == nil {
			continue
		}
		if _, ok := e.endpointOf(p.Scope, p.PublicKey, p.Endpoint); ok {
			continue
		}
		named = append(named, p)
	}
	var (
		mu       sync.Mutex
		failed   int
		firstErr error
	)
	fail := func(n int, err error) {
		mu.Lock()
		defer mu.Unlock()
		if failed += n; firstErr == nil {
			firstErr = err
		}
	}
	skipped := lookUpSideBySide(ctx, len(named), func(i int) {
		p := named[i]
		ap, err := resolveEndpoint(ctx, e.cfg.Resolver, p.Endpoint)
		if err != nil {
			e.log.Debug("peer endpoint unresolved", "peer", p.PublicKey, "err", err)
			fail(1, err)
			return
		}
		e.at("resolve.note")
		e.locked(func() { e.noteResolvedLocked(peerKey(p.Scope, p.PublicKey), p.Endpoint, ap) })
	})
	if skipped > 0 {
		fail(skipped, fmt.Errorf("not looked up: %w", ctx.Err()))
	}
	e.warnUnresolved(failed, firstErr)
}

// lookUpSideBySide runs look(0) to look(n-1), resolveWorkers at a time,
// and returns how many it did not start because ctx ended first. One
// after another, a resolver that does not answer makes each lookup wait
// its whole timeout.
func lookUpSideBySide(ctx context.Context, n int, look func(i int)) (skipped int) {
	var lookups sync.WaitGroup
	defer lookups.Wait()
	slots := make(chan struct{}, resolveWorkers)
	for i := range n {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return n - i
		}
		lookups.Go(func() {
			defer func() { <-slots }()
			look(i)
		})
	}
	return 0
}

// warnUnresolved says once per call, not once per peer, that names did not
// resolve: with the resolver down, every named peer fails every pass.
func (e *Engine) warnUnresolved(peers int, err error) {
	if peers > 0 {
		e.log.Warn("peer endpoints unresolved; waiting for the peers to reach us", "peers", peers, "err", err)
	}
}
