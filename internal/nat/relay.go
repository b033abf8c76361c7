package nat

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
)

// TURNServer is a TURN server (RFC 8656) with long-term credentials.
// Username and Credential are secrets: String, GoString and LogValue print
// the address only, so a server never puts them into a log line or an
// error message by accident.
type TURNServer struct {
	Address    string // "host:port" or "host" (port 3478)
	Username   string
	Credential string
}

func (s TURNServer) String() string { return s.Address }
func (s TURNServer) GoString() string {
	return "nat.TURNServer{Address:" + strconv.Quote(s.Address) + "}"
}
func (s TURNServer) LogValue() slog.Value { return slog.StringValue(s.Address) }

// Validate reports what is wrong with a server entry, without quoting its
// credentials.
func (s TURNServer) Validate() error {
	if _, _, err := splitServer(s.Address); err != nil {
		return fmt.Errorf("TURN server address %q: %w", clip(s.Address, 64), err)
	}
	if s.Username == "" || s.Credential == "" {
		return fmt.Errorf("TURN server %q: a username and a credential are required (long-term credentials)", clip(s.Address, 64))
	}
	return nil
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Server states reported by Relay.Status.
const (
	TURNAllocated = "allocated" // the relay's allocation is on this server
	TURNStandby   = "standby"   // not in use: an earlier server holds the allocation, or none was tried yet
	TURNFailed    = "failed"    // the last attempt failed; retried after a backoff
)

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Servers are tried in order; the first that grants an allocation
	// holds it until it fails.
	Servers []TURNServer
	Log     *slog.Logger
	// CheckInterval is how often the allocation is refreshed, which also
	// tells a live allocation from one the server lost (default 15 s).
	CheckInterval time.Duration
	// Timeout bounds one request to a server (default 5 s).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a server that failed
	// is tried again: it doubles from MinBackoff with every failure in a
	// row (defaults 2 s and 60 s).
	MinBackoff, MaxBackoff time.Duration
	// OnChange is called, from the relay's own goroutine and with no lock
	// held, after the allocation was made, lost or moved.
	OnChange func()
}

// ServerState is one server as Relay.Status reports it.
type ServerState struct {
	Address   string
	State     string // TURNAllocated, TURNStandby or TURNFailed
	LastError string
	Failures  int       // failed attempts in a row
	RetryAt   time.Time // when a failed server is tried again
}

// RelayStatus is a snapshot of a Relay.
type RelayStatus struct {
	// Server is the address (as configured) of the server holding the
	// allocation; empty when there is none.
	Server string
	// Relayed is the relayed transport address peers send to; invalid
	// when there is no allocation.
	Relayed netip.AddrPort
	Servers []ServerState
}

// Relay keeps one TURN allocation for the WireGuard traffic of a Bind: it
// allocates on the first configured server that answers, refreshes the
// allocation and its permissions, notices when the server lost it (a
// restart) or stops answering, and allocates again, backing off per server.
// The allocation has a UDP socket of its own; the Bind sends a peer's
// packets through it when WireGuard's endpoint for the peer is a relayed
// one, and the Bind's receive path delivers what arrives through it.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	deliver func(p []byte, from netip.AddrPort) // set by Bind.AttachRelay before Start

	cur atomic.Pointer[allocation]

	mu      sync.Mutex
	servers []serverState
	permits map[netip.Addr]bool // addresses every allocation lets in

	poke      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	startOnce sync.Once
	closeOnce sync.Once
}

type serverState struct {
	addr      netip.AddrPort // last resolution
	failures  int
	retryAt   time.Time
	lastError string
}

var errNoAllocation = errors.New("no TURN allocation")

// NewRelay checks cfg; Start begins allocating.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("TURN relay: no servers given")
	}
	for _, s := range cfg.Servers {
		if err := s.Validate(); err != nil {
			return nil, err
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 15 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 2 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(60*time.Second, cfg.MinBackoff)
	}
	return &Relay{
		cfg:     cfg,
		log:     cfg.Log,
		deliver: func([]byte, netip.AddrPort) {},
		servers: make([]serverState, len(cfg.Servers)),
		permits: map[netip.Addr]bool{},
		poke:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}, nil
}

// Start runs the relay's goroutine until Close.
func (r *Relay) Start() {
	r.startOnce.Do(func() { go r.run() })
}

// Close stops the relay and releases its allocation (a Refresh with
// lifetime 0, not waited for).
func (r *Relay) Close() {
	r.closeOnce.Do(func() {
		close(r.stop)
		r.startOnce.Do(func() { close(r.done) }) // never started
		<-r.done
		if a := r.cur.Swap(nil); a != nil {
			a.close(true)
		}
	})
}

// Status reports the allocation and every server's state.
func (r *Relay) Status() RelayStatus {
	a := r.cur.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	var st RelayStatus
	if a != nil {
		st.Server, st.Relayed = a.server.Address, a.relayed
	}
	for i, s := range r.servers {
		ss := ServerState{Address: r.cfg.Servers[i].Address, State: TURNStandby, LastError: s.lastError, Failures: s.failures}
		switch {
		case a != nil && a.index == i:
			ss.State = TURNAllocated
		case s.failures > 0:
			ss.State, ss.RetryAt = TURNFailed, s.retryAt
		}
		st.Servers = append(st.Servers, ss)
	}
	return st
}

// Relayed is the relayed transport address, invalid without an allocation.
func (r *Relay) Relayed() netip.AddrPort {
	if a := r.cur.Load(); a != nil {
		return a.relayed
	}
	return netip.AddrPort{}
}

// ServerIPs are the addresses of the configured servers as last resolved,
// and the relayed address's: where relayed transport addresses live.
func (r *Relay) ServerIPs() []netip.Addr {
	var out []netip.Addr
	if a := r.cur.Load(); a != nil {
		out = append(out, a.relayed.Addr())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.servers {
		if s.addr.IsValid() && !slices.Contains(out, s.addr.Addr()) {
			out = append(out, s.addr.Addr())
		}
	}
	return out
}

// Permit sets the addresses from which the allocation accepts packets
// (TURN permissions are per IP address, RFC 8656 §9): every address a peer
// may send from, so that a peer sending straight to our relayed address
// gets through. The permissions are installed at once and kept refreshed,
// on this allocation and on every later one.
func (r *Relay) Permit(addrs []netip.Addr) {
	want := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if a.IsValid() {
			want[a.Unmap()] = true
		}
	}
	r.mu.Lock()
	same := len(want) == len(r.permits)
	for a := range want {
		same = same && r.permits[a]
	}
	if !same {
		r.permits = want
	}
	r.mu.Unlock()
	if !same {
		select {
		case r.poke <- struct{}{}:
		default:
		}
	}
}

func (r *Relay) permitted() []netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]netip.Addr, 0, len(r.permits))
	for a := range r.permits {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// send relays one WireGuard packet to a peer's address. It never blocks
// on the server: the first packet to a new address waits for its
// permission on a goroutine of its own (WireGuard retransmits what is
// lost meanwhile).
func (r *Relay) send(p []byte, to netip.AddrPort) error {
	a := r.cur.Load()
	if a == nil {
		return errNoAllocation
	}
	return a.send(p, to)
}

// run is the relay's life: allocate, check, allocate again.
func (r *Relay) run() {
	defer close(r.done)
	for {
		a := r.cur.Load()
		if a == nil {
			wait := r.allocate()
			if r.cur.Load() != nil {
				r.changed()
				continue
			}
			if _, ok := r.sleep(wait); !ok {
				return
			}
			continue
		}
		poked, ok := r.sleep(r.cfg.CheckInterval)
		if !ok {
			return
		}
		var err error
		if !poked {
			err = a.refresh(r.cfg.Timeout)
		}
		if err == nil {
			err = a.installPermissions(r.permitted(), !poked, r.cfg.Timeout, r.log)
		}
		if err != nil {
			r.lose(a, err)
			r.changed()
		}
	}
}

// sleep waits d, or until poked or stopped.
func (r *Relay) sleep(d time.Duration) (poked, ok bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.stop:
		return false, false
	case <-r.poke:
		return true, true
	case <-t.C:
		return false, true
	}
}

func (r *Relay) changed() {
	if r.cfg.OnChange != nil {
		r.cfg.OnChange()
	}
}

// allocate tries every server that is due, in order, until one grants an
// allocation. It returns how long to wait before the next server is due.
func (r *Relay) allocate() time.Duration {
	now := time.Now()
	next := r.cfg.MaxBackoff
	for i, s := range r.cfg.Servers {
		r.mu.Lock()
		retryAt := r.servers[i].retryAt
		r.mu.Unlock()
		if retryAt.After(now) {
			next = min(next, retryAt.Sub(now))
			continue
		}
		a, addr, err := r.allocateOn(i)
		r.mu.Lock()
		st := &r.servers[i]
		if addr.IsValid() {
			st.addr = addr
		}
		if err == nil {
			st.failures, st.retryAt, st.lastError = 0, time.Time{}, ""
			r.mu.Unlock()
			r.cur.Store(a)
			r.log.Info("TURN relay allocated", "server", s.Address, "relayed", a.relayed)
			if err := a.installPermissions(r.permitted(), true, r.cfg.Timeout, r.log); err != nil {
				r.log.Warn("installing TURN permissions on the new allocation", "server", s.Address, "err", err)
			}
			return 0
		}
		st.failures++
		backoff := r.cfg.MinBackoff << min(st.failures-1, 16)
		if backoff > r.cfg.MaxBackoff || backoff <= 0 {
			backoff = r.cfg.MaxBackoff
		}
		st.retryAt, st.lastError = time.Now().Add(backoff), err.Error()
		failures := st.failures
		r.mu.Unlock()
		r.log.Warn("TURN allocation failed", "server", s.Address, "err", err, "failures", failures, "retry_in", backoff)
		next = min(next, backoff)
	}
	return max(next, 100*time.Millisecond)
}

// lose drops an allocation the server lost or that stopped answering. Its
// server is tried again at once: a restarted server grants a new one.
func (r *Relay) lose(a *allocation, err error) {
	if !r.cur.CompareAndSwap(a, nil) {
		return
	}
	r.mu.Lock()
	st := &r.servers[a.index]
	st.lastError, st.retryAt = err.Error(), time.Time{}
	r.mu.Unlock()
	r.log.Warn("TURN allocation lost; allocating again", "server", a.server.Address, "relayed", a.relayed, "err", err)
	a.close(!errors.Is(err, errAllocationGone))
}

// allocateOn allocates on server i. It returns the server's resolved
// address even when the allocation failed.
func (r *Relay) allocateOn(i int) (*allocation, netip.AddrPort, error) {
	s := r.cfg.Servers[i]
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
	defer cancel()
	addr, err := resolveServer(ctx, "TURN", s.Address)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	pc, client, err := r.connectTURN(s, addr)
	if err != nil {
		return nil, addr, err
	}
	conn, err := r.requestRelayed(ctx, client)
	if err != nil {
		client.Close()
		pc.Close()
		return nil, addr, fmt.Errorf("TURN server %s: allocate: %w", s.Address, describeTURNError(err))
	}
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		conn.Close()
		client.Close()
		pc.Close()
		return nil, addr, fmt.Errorf("TURN server %s: relayed address %v is not UDP", s.Address, conn.LocalAddr())
	}
	relayed := ua.AddrPort()
	relayed = netip.AddrPortFrom(relayed.Addr().Unmap(), relayed.Port())
	a := &allocation{
		server:    s,
		index:     i,
		addr:      addr,
		udpAddr:   net.UDPAddrFromAddrPort(addr),
		pc:        pc,
		client:    client,
		conn:      conn,
		relayed:   relayed,
		realm:     client.Realm(),
		installed: map[netip.Addr]time.Time{},
		warm:      make(chan warmPacket, 64),
		closed:    make(chan struct{}),
	}
	go a.readLoop(r.deliver)
	go a.warmLoop(r.log)
	return a, addr, nil
}

// connectTURN opens the UDP socket a TURN server is talked to over and a
// listening client on it.
func (r *Relay) connectTURN(s TURNServer, addr netip.AddrPort) (net.PacketConn, *turn.Client, error) {
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	pc, err := net.ListenPacket(network, ":0")
	if err != nil {
		return nil, nil, fmt.Errorf("open a UDP socket for TURN server %s: %w", s.Address, err)
	}
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr.String(),
		TURNServerAddr: addr.String(),
		Username:       s.Username,
		Password:       s.Credential,
		Software:       "zlayer-overlayd",
		Conn:           pc,
		LoggerFactory:  pionLogs{r.log.With("server", s.Address)},
	})
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("TURN server %s: %w", s.Address, err)
	}
	if err := client.Listen(); err != nil {
		client.Close()
		pc.Close()
		return nil, nil, fmt.Errorf("TURN server %s: %w", s.Address, err)
	}
	return pc, client, nil
}

// requestRelayed asks for a relayed address and gives up when ctx ends or the
// relay closes. The caller closes the client on an error: that fails the
// Allocate still running, whose late result is then dropped here.
func (r *Relay) requestRelayed(ctx context.Context, client *turn.Client) (net.PacketConn, error) {
	type allocated struct {
		conn net.PacketConn
		err  error
	}
	ch := make(chan allocated, 1)
	go func() {
		c, err := client.Allocate()
		ch <- allocated{c, err}
	}()
	var err error
	select {
	case res := <-ch:
		if res.err == nil {
			return res.conn, nil
		}
		return nil, res.err
	case <-ctx.Done():
		err = fmt.Errorf("no answer within %v", r.cfg.Timeout)
	case <-r.stop:
		err = errors.New("relay closed")
	}
	go func() {
		if late := <-ch; late.conn != nil {
			late.conn.Close()
		}
	}()
	return nil, err
}

// describeTURNError words pion's errors for a log reader.
func describeTURNError(err error) error {
	var te *stun.TurnError
	if errors.As(err, &te) {
		switch te.ErrorCodeAttr.Code {
		case stun.CodeUnauthorized:
			return fmt.Errorf("the server refused the credentials (401 %s); check --turn-username and --turn-password-file or the request's turn_servers", te.ErrorCodeAttr.Reason)
		case stun.CodeForbidden:
			return fmt.Errorf("the server forbids this allocation (403 %s)", te.ErrorCodeAttr.Reason)
		case stun.CodeAllocQuotaReached:
			return fmt.Errorf("the user's allocation quota is reached (486 %s)", te.ErrorCodeAttr.Reason)
		}
	}
	return err
}

// allocation is one TURN allocation and the client that holds it.
type allocation struct {
	server  TURNServer
	index   int
	addr    netip.AddrPort
	udpAddr *net.UDPAddr
	pc      net.PacketConn // the allocation's own UDP socket (its 5-tuple)
	client  *turn.Client
	conn    net.PacketConn // pion's relayed conn
	relayed netip.AddrPort
	realm   stun.Realm

	mu        sync.Mutex
	nonce     stun.Nonce
	installed map[netip.Addr]time.Time // permissions we installed, and when

	// ready holds the addresses pion's WriteTo has a permission for, so a
	// write to them does not block (netip.Addr -> struct{}).
	ready sync.Map
	warm  chan warmPacket

	closeOnce sync.Once
	closed    chan struct{}
}

type warmPacket struct {
	p  []byte
	to netip.AddrPort
}

// errAllocationGone marks an answer saying the server has no allocation
// for us (it restarted, or the allocation expired).
var errAllocationGone = errors.New("the server no longer has our allocation")

func (a *allocation) send(p []byte, to netip.AddrPort) error {
	if _, ok := a.ready.Load(to.Addr()); ok {
		_, err := a.conn.WriteTo(p, net.UDPAddrFromAddrPort(to))
		return err
	}
	select {
	case a.warm <- warmPacket{p: bytes.Clone(p), to: to}:
	default: // a burst to addresses without permission: WireGuard retransmits
	}
	return nil
}

// warmLoop writes the first packets to new addresses: pion creates the
// permission (one round trip to the server) inside that write.
func (a *allocation) warmLoop(log *slog.Logger) {
	for {
		select {
		case <-a.closed:
			return
		case w := <-a.warm:
			if _, ok := a.ready.Load(w.to.Addr()); ok {
				a.conn.WriteTo(w.p, net.UDPAddrFromAddrPort(w.to))
				continue
			}
			if _, err := a.conn.WriteTo(w.p, net.UDPAddrFromAddrPort(w.to)); err != nil {
				select {
				case <-a.closed:
					return
				default:
				}
				log.Debug("TURN permission for a peer address failed", "server", a.server.Address, "peer", w.to, "err", err)
				continue
			}
			a.ready.Store(w.to.Addr(), struct{}{})
		}
	}
}

// readLoop hands what arrives through the allocation to deliver.
func (a *allocation) readLoop(deliver func([]byte, netip.AddrPort)) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := a.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		ap := ua.AddrPort()
		deliver(buf[:n], netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
}

// close releases the allocation; dealloc says whether to tell the server.
func (a *allocation) close(dealloc bool) {
	a.closeOnce.Do(func() {
		close(a.closed)
		if dealloc {
			a.conn.Close() // sends a Refresh with lifetime 0
		} else {
			// pion's Close also deallocates; the server has nothing to
			// free, but the socket is closed right after anyway.
			a.conn.Close()
		}
		a.pc.Close()
		a.client.Close()
	})
}

// refresh renews the allocation (lifetime 600 s, RFC 8656's default). An
// error means the allocation can no longer be used: the server lost it,
// or it does not answer.
func (a *allocation) refresh(timeout time.Duration) error {
	var lifetime [4]byte
	binary.BigEndian.PutUint32(lifetime[:], 600)
	_, err := a.request(timeout, stun.MethodRefresh, stun.RawAttribute{Type: stun.AttrLifetime, Value: lifetime[:]})
	return err
}

// permissionRefresh is how often permissions are renewed: they live 300 s.
const permissionRefresh = 120 * time.Second

// permissionBatch is how many peer addresses one CreatePermission request
// carries (RFC 8656 section 9.1 allows several XOR-PEER-ADDRESS
// attributes): one round trip per address made a node with many relayed
// peers wait that many round trips, at start and at every renewal. 32 IPv6
// attributes are 768 bytes: the request stays within any path's MTU.
const permissionBatch = 32

// installPermissions installs a permission for every address in want that
// has none yet (all of them again when due), a batch per request. A
// refused address is logged and skipped; an error that says the
// allocation is gone is returned.
func (a *allocation) installPermissions(want []netip.Addr, renew bool, timeout time.Duration, log *slog.Logger) error {
	now := time.Now()
	var due []netip.Addr
	a.mu.Lock()
	for _, ip := range want {
		if at, ok := a.installed[ip]; ok && (!renew || now.Sub(at) < permissionRefresh) {
			continue
		}
		due = append(due, ip)
	}
	a.mu.Unlock()
	for len(due) > 0 {
		n := min(len(due), permissionBatch)
		if err := a.permit(due[:n], now, timeout, log); err != nil {
			return err
		}
		due = due[n:]
	}
	return nil
}

// permit asks for the permissions of ips in one request. A server that
// refuses one address refuses the whole request (section 9.1), so a
// refused batch is asked again an address at a time to learn which.
func (a *allocation) permit(ips []netip.Addr, now time.Time, timeout time.Duration, log *slog.Logger) error {
	peers := make([]stun.Setter, len(ips))
	for i, ip := range ips {
		peers[i] = xorPeerAddress{netip.AddrPortFrom(ip, 0)}
	}
	_, err := a.request(timeout, stun.MethodCreatePermission, peers...)
	switch {
	case err == nil:
	case refusal(err) && len(ips) > 1:
		for i := range ips {
			if err := a.permit(ips[i:i+1], now, timeout, log); err != nil {
				return err
			}
		}
		return nil
	case refusal(err):
		log.Warn("TURN server refuses a permission for a peer address", "server", a.server.Address, "peer", ips[0], "err", err)
		// Recorded as if granted: not asked again before the next renewal.
	default:
		return err
	}
	a.mu.Lock()
	for _, ip := range ips {
		a.installed[ip] = now
	}
	a.mu.Unlock()
	return nil
}

// refusal reports whether a CreatePermission error refuses the addresses
// rather than saying the allocation is gone: 403 (coturn's answer to an
// address its policy denies), or an error response without ERROR-CODE
// (pion's server's answer to the same).
func refusal(err error) bool {
	var te *TURNError
	return errors.As(err, &te) && (te.Code == stun.CodeForbidden || te.Code == 0)
}

// TURNError is an error response of a TURN server.
type TURNError struct {
	Method stun.Method
	Code   stun.ErrorCode
	Reason string
}

func (e *TURNError) Error() string {
	return fmt.Sprintf("%s: error %d %s", e.Method, int(e.Code), e.Reason)
}

func (e *TURNError) Is(target error) bool {
	return target == errAllocationGone && (e.Code == stun.CodeAllocMismatch || e.Code == stun.CodeUnauthorized || e.Code == stun.CodeStaleNonce)
}

// request sends one authenticated request on the allocation's 5-tuple and
// waits at most timeout for the answer. A 401 or 438 with a fresh nonce is
// answered with the new nonce; a server that restarted answers the retry
// with 437 (allocation mismatch).
func (a *allocation) request(timeout time.Duration, method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	for range 3 {
		a.mu.Lock()
		nonce, realm := a.nonce, a.realm
		a.mu.Unlock()
		setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
		setters = append(setters, attrs...)
		if len(nonce) > 0 {
			setters = append(setters, stun.NewUsername(a.server.Username), realm, nonce,
				stun.NewLongTermIntegrity(a.server.Username, realm.String(), a.server.Credential))
		}
		setters = append(setters, stun.Fingerprint)
		msg, err := stun.Build(setters...)
		if err != nil {
			return nil, fmt.Errorf("build a TURN %s request: %w", method, err)
		}
		res, err := a.perform(msg, timeout)
		if err != nil {
			return nil, err
		}
		if res.Type.Class != stun.ClassErrorResponse {
			return res, nil
		}
		var code stun.ErrorCodeAttribute
		if err := code.GetFrom(res); err != nil {
			return nil, &TURNError{Method: method, Code: 0, Reason: "error response without ERROR-CODE"}
		}
		if code.Code == stun.CodeStaleNonce || code.Code == stun.CodeUnauthorized {
			var n stun.Nonce
			if n.GetFrom(res) == nil && !bytes.Equal(n, nonce) {
				var rl stun.Realm
				a.mu.Lock()
				a.nonce = append(stun.Nonce(nil), n...)
				if rl.GetFrom(res) == nil {
					a.realm = append(stun.Realm(nil), rl...)
				}
				a.mu.Unlock()
				continue
			}
		}
		return nil, &TURNError{Method: method, Code: code.Code, Reason: string(code.Reason)}
	}
	return nil, fmt.Errorf("TURN %s: the server keeps asking for a new nonce", method)
}

// perform runs one transaction, bounded by timeout (pion retransmits for
// up to 25 s on its own).
func (a *allocation) perform(msg *stun.Message, timeout time.Duration) (*stun.Message, error) {
	type result struct {
		msg *stun.Message
		err error
	}
	ch := make(chan result, 1)
	go func() {
		res, err := a.client.PerformTransaction(msg, a.udpAddr, false)
		ch <- result{res.Msg, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("TURN %s: %w", msg.Type.Method, r.err)
		}
		return r.msg, nil
	case <-t.C:
		return nil, fmt.Errorf("TURN %s: no answer from %s within %v", msg.Type.Method, a.server.Address, timeout)
	case <-a.closed:
		return nil, fmt.Errorf("TURN %s: allocation closed", msg.Type.Method)
	}
}

// xorPeerAddress is an XOR-PEER-ADDRESS attribute.
type xorPeerAddress struct{ ap netip.AddrPort }

func (x xorPeerAddress) AddTo(m *stun.Message) error {
	return stun.XORMappedAddress{IP: x.ap.Addr().AsSlice(), Port: int(x.ap.Port())}.AddToAs(m, stun.AttrXORPeerAddress)
}

// pionLogs sends pion's log lines to slog at debug level: what matters is
// logged by the relay itself, once, in our words.
type pionLogs struct{ log *slog.Logger }

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("component", "pion/"+scope)}
}

type pionLogger struct{ log *slog.Logger }

func (l pionLogger) Trace(string)                 {}
func (l pionLogger) Tracef(string, ...any)        {}
func (l pionLogger) Debug(msg string)             { l.log.Debug(msg) }
func (l pionLogger) Debugf(f string, args ...any) { l.log.Debug(fmt.Sprintf(f, args...)) }
func (l pionLogger) Info(msg string)              { l.log.Debug(msg) }
func (l pionLogger) Infof(f string, args ...any)  { l.log.Debug(fmt.Sprintf(f, args...)) }
func (l pionLogger) Warn(msg string)              { l.log.Debug(msg) }
func (l pionLogger) Warnf(f string, args ...any)  { l.log.Debug(fmt.Sprintf(f, args...)) }
func (l pionLogger) Error(msg string)             { l.log.Debug(msg) }
func (l pionLogger) Errorf(f string, args ...any) { l.log.Debug(fmt.Sprintf(f, args...)) }
