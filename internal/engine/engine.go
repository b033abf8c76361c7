// Package engine executes requests: it owns the desired state of the node's
// overlay, commits every change to the store before answering, drives the
// kernel through small interfaces, and reconciles the kernel back to the
// desired state at start and on a timer.
//
// # Layers
//
// Each file belongs to one layer and calls only into its own layer and the
// ones below it (layers_test.go checks this):
//
//  0. Desired state (state.go, names.go, validate.go, nodekey.go): what the
//     node should be, address pools and placement. Memory only, no I/O.
//  1. Device applier (device.go): brings one WireGuard device, its
//     addresses and its routes to what the desired state says, serialised
//     per device.
//  2. Domains (global.go, service.go, attach.go, guest.go, windows.go,
//     peers.go, alloc.go, dnsint.go, fwint.go, natint.go, hooks.go,
//     backup.go): each request's steps — validate, lock, commit, apply,
//     answer.
//  3. Top (engine.go, reconcile.go, monitor.go, status.go, listing.go):
//     dispatch, the background passes and what reads across domains.
//
// # Lock model
//
// Four kinds of lock, always taken in this order and never the reverse:
//
//  1. e.topology (sync.RWMutex): the global overlay as a whole — its device,
//     node key, slice and cluster CIDR. setup_global_overlay,
//     teardown_global_overlay and set_local_wg_pubkey hold it for writing;
//     every other request and every background pass hold it for reading.
//     Nothing slow that is not kernel work (no name resolution) happens
//     under it.
//  2. Resource locks (e.locks, locks.go): "node", "service:<name>",
//     "handle:<attachment>", "peer:<scope>|<key>", "claim:<scope>|<prefix>"
//     (an allowed IP a request gives a peer), "dns:<name>". A request
//     takes all it needs in one call, holds them until it answers, and takes
//     no more meanwhile. Requests on one resource run one after another;
//     requests on different resources in parallel. Reconcile takes the same
//     locks for what it repairs.
//  3. Device locks (device.mu, device.go), one per WireGuard device. Every
//     change to a device — by a request or by a reconcile pass — is made
//     holding it, and reads the desired state inside it. A request commits
//     its change to the store and to the desired state first and applies it
//     under the device lock before answering; a pass reads the desired state
//     and applies it under the same lock. So no pass can apply a picture
//     older than an ok the main daemon received.
//  4. e.mu: the in-memory desired state (e.st) and the small maps beside it.
//     Held only around memory work, never across I/O, always released by
//     defer (e.locked), so a panic cannot leave it held. Taken last.
//
// Subsystems have leaf locks of their own, taken after 1–3 and never
// together with e.mu: dnsState.applyMu (DNS listeners and policy are
// derived and applied as one step), fwState.mu (the nftables table),
// natState.mu, and e.bgMu (held only inside goBackground and Close, around
// no other lock). e.bridgeLabel is a leaf too, taken before e.mu: see
// ensureBridge.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Features are the capabilities a hello answer advertises.
var Features = []string{"hello", "events", "persistent-state", "peer-upsert", "subnet", "private-key", "reconcile", "node-config-key", "dns-delegation", "list-dns", "backup", "netns-handle", "dual-stack", "turn-relay"}

// Config wires an Engine. Store is required; a nil Net or WG makes the
// operations that need them fail with a clear error (pure-logic tests).
type Config struct {
	Store *store.Store
	Net   Network
	WG    wg.Backend
	Procs Processes
	Log   *slog.Logger
	// Publish pushes an event to every connected client.
	Publish func(protocol.Event)
	// EventsDropped reports how many events clients failed to take.
	EventsDropped func() uint64

	// MTU of the overlay devices, bridges and container links (default 1420).
	MTU int
	// SliceBits is the prefix length of a self-assigned node slice (default
	// 28 for IPv4, 120 for IPv6: the reference leader's grid).
	SliceBits int
	// ServiceBits is the prefix length of a service subnet when the main
	// daemon does not send one (default 28 / 120, the reference's).
	ServiceBits int
	// ReconcileInterval is how often the kernel is checked against the
	// desired state (default 30 s; negative disables the timer).
	ReconcileInterval time.Duration
	// HealthInterval is how often peers' handshakes are checked for
	// peer_health_changed and nat_endpoint_changed events (default 5 s;
	// negative disables the monitor).
	HealthInterval time.Duration
	// PeerStatsMaxAge caps how old the handshakes, byte counters and
	// endpoints status reports may be (default 5 s). Status answers from
	// the last read of a device (the health monitor reads every device
	// each HealthInterval) while that read is younger than 20 times what
	// it took and than this, and reads the device again otherwise: live
	// for a device of a few peers, up to about a second old at 5,000. The
	// peers themselves and their configuration are always current.
	PeerStatsMaxAge time.Duration
	// Resolver looks up the host names of peers' endpoints (default
	// net.DefaultResolver).
	Resolver Resolver
	// RequestTimeout bounds one request, waiting for the resources it needs
	// included (default 1 minute): a request stuck behind another gets an
	// err saying which resource is busy instead of hanging its client.
	RequestTimeout time.Duration

	// DNS, when set, serves the cluster zone; DNSPolicy is the recursion
	// policy the DNS server was created with.
	DNS       *DNSConfig
	DNSPolicy *DNSPolicy
	// Firewall, when set, keeps our nftables table.
	Firewall *FirewallConfig
	// ReferenceMarkerPath is the Rust overlayd's agent_network.json (in the
	// data directory): when it exists, this node ran that daemon, and its
	// leftovers are taken over (takeover.go). Empty disables it.
	ReferenceMarkerPath string
	// NodeConfigPath is ZLayer's node_config.json (in the data directory):
	// when it holds a WireGuard key pair, the global device uses it, since
	// that is the key the cluster knows this node by. Empty disables it.
	NodeConfigPath string
	// EnableForwarding keeps IP forwarding as the node's overlays need it.
	// It is called after every topology change with need, which reports
	// the address families (IPv4, IPv6) the overlays use right now; the
	// implementation calls need under its own serialisation, turns
	// forwarding on for those families, and puts back what it changed for
	// the others: everything once no overlay is left. It returns the
	// sysctls it changed and restored. A daemon that is only started does
	// not change the host: need reports nothing then.
	EnableForwarding func(need func() (v4, v6 bool)) (enabled, restored []string, err error)
	// NAT, when set, enables STUN-based NAT traversal on the global device.
	NAT *NATConfig
	// Caps describe the platform; HCN attaches Windows containers.
	Caps Capabilities
	HCN  HCN
	// Observer, when set, receives reconcile and firewall measurements
	// (the metrics endpoint).
	Observer Observer
}

// Engine is safe for concurrent use.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	store *store.Store

	topology sync.RWMutex // see the lock model above
	locks    keyedLocks
	passMu   sync.Mutex // one reconcile pass at a time (the loop, Start, Reconcile)

	mu sync.Mutex // guards st and the maps below marked so; never held across I/O
	st *state

	alias string // the label prefix of our links (see aliasPrefix)
	// legacy are the Rust overlayd's dedicated services (takeover.go); nil
	// when it never ran here. Read-only after New.
	legacy map[string]legacyDedicated
	// bridgeLabel keeps the takeover's sweep from seeing a bridge of ours
	// between its creation and its label (ensureBridge).
	bridgeLabel sync.RWMutex

	detaching sync.Map // host link name -> chan struct{} closed when deleted
	// detachWait bounds how long an attach waits for the removal of the
	// links a detach of the same container left behind.
	detachWait time.Duration

	hooks    hooks
	health   map[string]bool             // guarded by mu; peerKey -> healthy
	trials   map[string]*trial           // guarded by mu; candidate endpoints being tried
	rx       map[string]rxMark           // guarded by mu; receive-counter progress per peer
	resolved map[string]resolvedEndpoint // guarded by mu; peerKey -> requested endpoint as resolved
	dns      *dnsState
	fw       *fwState
	nat      *natState

	forwarding bool // guarded by mu; IP forwarding is on (or not ours to turn on)
	// nodeConfigProblem is why node_config.json's key is not used ("" when
	// it is, or there is none); guarded by mu, shown by status.
	nodeConfigProblem string

	reconcileRuns    atomic.Uint64
	reconcileChanges atomic.Uint64
	lastReconcile    atomic.Int64

	// testHook, set only by tests, runs at named points between the steps
	// of an operation, so a test can put a concurrent request exactly
	// there.
	testHook func(point string)

	stopping     atomic.Bool
	shutdownOnce sync.Once
	shutdownCh   chan struct{}
	// bgMu orders goBackground's check of bgCtx with Close ending it:
	// nothing starts once bgCtx is done. Background loops stop on it, and
	// the waits they make (a reconcile pass's lookups and lock waits)
	// end with it.
	bgMu      sync.Mutex
	bg        sync.WaitGroup
	bgCtx     context.Context
	bgCancel  context.CancelFunc
	closeOnce sync.Once
}

// New loads the desired state from the store. It does not touch the kernel;
// Start does.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("engine: a store is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MTU == 0 {
		cfg.MTU = wg.DefaultMTU
	}
	if cfg.Procs == nil {
		cfg.Procs = HostProcesses()
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = 30 * time.Second
	}
	if cfg.PeerStatsMaxAge == 0 {
		cfg.PeerStatsMaxAge = 5 * time.Second
	}
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = 5 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = time.Minute
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	loaded, err := cfg.Store.Load()
	if err != nil {
		return nil, err
	}
	st, err := loadState(loaded)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (the file is left as it is; move it aside to start empty)", cfg.Store.Path(), err)
	}
	e := &Engine{
		forwarding: cfg.EnableForwarding == nil,
		cfg:        cfg,
		log:        cfg.Log,
		store:      cfg.Store,
		st:         st,
		alias:      aliasFor(st.node.Identity),
		health:     map[string]bool{},
		trials:     map[string]*trial{},
		rx:         map[string]rxMark{},
		resolved:   map[string]resolvedEndpoint{},
		shutdownCh: make(chan struct{}),
		detachWait: defaultDetachWait,
	}
	e.bgCtx, e.bgCancel = context.WithCancel(context.Background())
	e.enableTakeover(cfg.ReferenceMarkerPath)
	if cfg.DNS != nil {
		if err := e.enableDNS(*cfg.DNS, cfg.DNSPolicy); err != nil {
			return nil, err
		}
	}
	if cfg.Firewall != nil {
		e.enableFirewall(*cfg.Firewall)
	}
	if cfg.NAT != nil {
		e.enableNAT(*cfg.NAT)
	}
	return e, nil
}

// Start puts the kernel back to the desired state (devices, peers, bridges,
// container links, routes) and starts the background loops. The daemon
// accepts requests only after Start returns, so a restart is invisible to
// the main daemon except for the time it takes.
func (e *Engine) Start(ctx context.Context) error {
	start := time.Now()
	changes, err := e.reconcile(ctx, true)
	if err != nil {
		return err
	}
	e.log.Info("state restored", "changes", changes, "took", time.Since(start).Round(time.Millisecond))
	if e.cfg.ReconcileInterval > 0 {
		e.goBackground(e.reconcileLoop)
	}
	e.startMonitor(e.cfg.HealthInterval)
	return nil
}

// Close stops the background loops. Userspace devices die with the process;
// everything else (bridges, container links, kernel devices, the store)
// stays for the next start.
func (e *Engine) Close() {
	e.closeOnce.Do(func() {
		e.bgMu.Lock()
		e.bgCancel()
		e.bgMu.Unlock()
		e.bg.Wait()
		var devs []*device
		e.locked(func() { devs = e.devicesLocked() })
		for _, d := range devs {
			// A userspace device in the daemon's process dies with it:
			// close it cleanly. A kernel device, or one whose data plane
			// runs in a process of its own, stays for the next start.
			if d.wg.Kind() == wg.KindUserspace && !wg.Survives(d.wg) {
				if err := d.wg.Close(); err != nil {
					e.log.Warn("closing wireguard device", "device", d.Name(), "err", err)
				}
			}
		}
	})
}

func (e *Engine) devicesLocked() []*device {
	var out []*device
	if g := e.st.global; g != nil && g.dev != nil {
		out = append(out, g.dev)
	}
	for _, svc := range e.st.services {
		if svc.dev != nil {
			out = append(out, svc.dev)
		}
	}
	return out
}

// Alive answers once the engine's locks can be taken — the topology for
// reading, and the state — or fails when ctx ends first: the service
// manager's watchdog asks it, so a wedged engine stops being reported alive.
func (e *Engine) Alive(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.topology.RLock()
		defer e.topology.RUnlock()
		e.locked(func() {})
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the engine's locks were not free within the watchdog interval: %w", ctx.Err())
	}
}

// ShutdownRequested is closed once a shutdown request has been answered
// ok; the daemon then stops serving and exits.
func (e *Engine) ShutdownRequested() <-chan struct{} { return e.shutdownCh }

// Stop makes every later request fail with a clear message (used when the
// daemon is stopping for a signal).
func (e *Engine) Stop() { e.stopping.Store(true) }

// Handle executes one request. It never panics on bad input and always
// answers; failures are protocol.Err whose message names the op.
func (e *Engine) Handle(ctx context.Context, req protocol.Request) protocol.Response {
	if e.stopping.Load() {
		return errf("%s: zlayer-overlayd is shutting down; retry once it has restarted", req.Op())
	}
	// status waits for nothing but the state lock: the deadline below
	// would be a timer set and stopped for nothing on the request the main
	// daemon sends most, a quarter of its time and half its allocations.
	if _, ok := req.(protocol.Status); ok {
		return e.status()
	}
	// A request waiting for a resource another request holds gives up in
	// time instead of queueing behind it forever.
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RequestTimeout)
	defer cancel()
	resp, err := e.dispatch(ctx, req)
	if err != nil {
		var plain errUnprefixed
		if errors.As(err, &plain) {
			return protocol.Err{Message: plain.msg}
		}
		return protocol.Err{Message: req.Op() + ": " + err.Error()}
	}
	return resp
}

func (e *Engine) dispatch(ctx context.Context, req protocol.Request) (protocol.Response, error) {
	switch r := req.(type) {
	case protocol.Hello:
		if slices.Contains(r.Features, protocol.FeatureDNS) {
			e.delegateDNS(ctx, "hello with the dns feature")
		}
		return protocol.HelloResult{ProtocolVersion: protocol.Version, ServerVersion: version.Version, Features: Features}, nil
	case protocol.SetLocalNodeID:
		return e.setNodeID(ctx, r)
	case protocol.SetLocalWGPubkey:
		return e.setExpectedPubkey(ctx, r)
	case protocol.SetupGlobalOverlay:
		return e.setupGlobal(ctx, r)
	case protocol.TeardownGlobalOverlay:
		return e.teardownGlobal(ctx)
	case protocol.SetupServiceOverlay:
		return e.setupService(ctx, r)
	case protocol.TeardownServiceOverlay:
		return e.teardownService(ctx, r)
	case protocol.AllocateIP:
		return e.allocateIP(ctx, r)
	case protocol.ReleaseIP:
		return e.releaseIP(ctx, r)
	case protocol.AttachContainer:
		return e.attach(ctx, r)
	case protocol.DetachContainer:
		return e.detach(ctx, r)
	case protocol.AddPeer:
		return e.addPeer(ctx, r)
	case protocol.RemovePeer:
		return e.removePeer(ctx, r)
	case protocol.AddAllowedIP:
		return e.addAllowedIP(ctx, r)
	case protocol.RemoveAllowedIP:
		return e.removeAllowedIP(ctx, r)
	case protocol.RegisterDNS:
		return e.registerDNS(ctx, r)
	case protocol.UnregisterDNS:
		return e.unregisterDNS(ctx, r)
	case protocol.NATTick:
		return e.natTick(ctx)
	case protocol.ListDNS:
		return e.listDNS()
	case protocol.Backup:
		return e.backup(ctx, r)
	case protocol.Shutdown:
		e.stopping.Store(true)
		e.shutdownOnce.Do(func() { close(e.shutdownCh) })
		return protocol.OK{}, nil
	default:
		return nil, errors.New("not available in this build of zlayer-overlayd")
	}
}

func (e *Engine) setNodeID(ctx context.Context, r protocol.SetLocalNodeID) (protocol.Response, error) {
	// Every writer of the node record rewrites it from a copy: serialise
	// them, or one undoes another (in the store too).
	unlock, err := e.locks.lock(ctx, nodeLock())
	if err != nil {
		return nil, err
	}
	defer unlock()
	var node store.Node
	e.locked(func() { node = e.st.node })
	node.NodeID = r.NodeID
	if err := e.store.Update(func(tx *store.Tx) error { return tx.PutNode(node) }); err != nil {
		return nil, err
	}
	e.locked(func() { e.st.node.NodeID = r.NodeID })
	return protocol.OK{}, nil
}

func (e *Engine) setExpectedPubkey(ctx context.Context, r protocol.SetLocalWGPubkey) (protocol.Response, error) {
	// Any string is recorded, as the reference does (its own tests send
	// "k"): the main daemon's idea of our key is information, and a value
	// that is not a key is reported in status rather than refused.
	// Base64 spells a key more than one way; keep the one
	// PublicKey().String() gives, so comparisons are of keys.
	if k, err := wg.ParseKey(r.Pubkey); err == nil {
		r.Pubkey = k.String()
	}
	if len(r.Pubkey) > 1024 {
		return nil, fmt.Errorf("pubkey is %d bytes; a WireGuard public key is 44 base64 characters", len(r.Pubkey))
	}
	// Exclusive: the global device may switch to the key just named.
	release, err := e.holdExclusive(ctx, nodeLock())
	if err != nil {
		return nil, err
	}
	defer release()
	var node store.Node
	e.locked(func() { node = e.st.node })
	node.ExpectedPubkey = r.Pubkey
	if err := e.store.Update(func(tx *store.Tx) error { return tx.PutNode(node) }); err != nil {
		return nil, err
	}
	e.locked(func() { e.st.node.ExpectedPubkey = r.Pubkey })
	if err := e.adoptNodeConfigKey(r.Pubkey); err != nil {
		e.log.Warn("keeping the global device's key", "err", err)
	}
	var ours wgtypes.Key
	var up bool
	e.locked(func() { ours, up = e.st.key, e.st.global != nil })
	if up && ours.PublicKey().String() != r.Pubkey {
		e.log.Warn("the main daemon's key for this node differs from the overlay device's key: peers will not accept our handshakes; put the matching private key into "+NodeConfigFile+" or send setup_global_overlay with private_key",
			"expected", truncate(r.Pubkey), "device", ours.PublicKey().String())
	}
	return protocol.OK{}, nil
}
