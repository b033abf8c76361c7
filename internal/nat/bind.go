package nat

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// ErrNotOpen is returned (wrapped) by Discover and Probe while the bind is
// closed: before the WireGuard device is up, while it is down, or between
// the close and reopen of a listen-port change.
var ErrNotOpen = errors.New("the WireGuard UDP socket is not open (is the device up?)")

// Default RFC 5389 §7.2.1 schedule: the first retransmission after rto, each
// later one after twice the previous wait, and after the last request one
// more doubled wait (250 ms × 2⁴ = 4 s, which is the RFC's Rm = 16 × RTO).
// 7.75 s in all, unless the context ends first.
const (
	defaultRTO   = 250 * time.Millisecond
	defaultTries = 5
)

// Bind is a conn.Bind that also carries STUN on the WireGuard socket. Hand
// it to wireguard-go (wg.Options.Bind) and call Discover or Probe while
// the device is up.
type Bind struct {
	inner conn.Bind
	log   *slog.Logger

	// Retransmission schedule; tests shorten it.
	rto   time.Duration
	tries int

	mu      sync.Mutex
	open    bool
	port    uint16
	pending map[TransactionID]*transaction

	// waiting counts pending transactions, so that the receive path can
	// drop a STUN packet nobody asked for without taking mu.
	waiting atomic.Int32
	// unsolicited counts STUN packets taken off the WireGuard path that
	// answered no pending request.
	unsolicited atomic.Uint64

	// TURN relaying (relaybind.go).
	relay       atomic.Pointer[Relay]
	relayIn     chan relayPacket
	relayDrops  atomic.Uint64
	relayRoutes map[netip.AddrPort]bool // guarded by mu; ParseEndpoint gives relayEndpoints for these
	openDone    chan struct{}           // guarded by mu; closed by Close, ends the relay receive function
	// probes maps a relayed target to the direct addresses that get
	// copies of handshake initiations (copy-on-write, written under mu).
	probes atomic.Pointer[map[netip.AddrPort]*probeSet]
	// vias records, for addresses ever sent to through the relay, how the
	// last packet to them left (netip.AddrPort -> *atomic.Uint32).
	vias     sync.Map
	tracking atomic.Bool // vias is not empty: direct sends are noted too
}

var (
	_ conn.Bind                  = (*Bind)(nil)
	_ conn.BindSocketToInterface = (*Bind)(nil)
	_ conn.PeekLookAtSocketFd    = (*Bind)(nil)
)

// NewBind wraps inner (nil means conn.NewDefaultBind()) so that STUN can
// use its socket. log may be nil (slog.Default()).
func NewBind(inner conn.Bind, log *slog.Logger) *Bind {
	if inner == nil {
		inner = conn.NewDefaultBind()
	}
	if log == nil {
		log = slog.Default()
	}
	b := &Bind{
		inner:       inner,
		log:         log,
		rto:         defaultRTO,
		tries:       defaultTries,
		pending:     make(map[TransactionID]*transaction),
		relayIn:     make(chan relayPacket, relayQueue),
		relayRoutes: map[netip.AddrPort]bool{},
	}
	b.probes.Store(&map[netip.AddrPort]*probeSet{})
	return b
}

// Open opens the inner bind and wraps each of its receive functions with the
// STUN filter, and adds one receive function for what arrives through the
// TURN relay.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.inner.Open(port)
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		switch fn.PrettyName() {
		case "v4":
			wrapped[i] = b.receiveIPv4(fn)
		case "v6":
			wrapped[i] = b.receiveIPv6(fn)
		default:
			wrapped[i] = b.receive(fn)
		}
	}
	done := make(chan struct{})
	wrapped = append(wrapped, b.receiveRelay(done))
	b.mu.Lock()
	b.open, b.port = true, actual
	b.openDone = done
	b.mu.Unlock()
	return wrapped, actual, nil
}

// Close closes the inner bind and fails every pending Discover with
// ErrNotOpen.
func (b *Bind) Close() error {
	b.mu.Lock()
	b.open, b.port = false, 0
	if b.openDone != nil {
		close(b.openDone)
		b.openDone = nil
	}
	for id, tx := range b.pending {
		tx.finish(result{err: ErrNotOpen})
		delete(b.pending, id)
		b.waiting.Add(-1)
	}
	b.mu.Unlock()
	return b.inner.Close()
}

// Port returns the WireGuard listening port, and false while the bind is
// closed.
func (b *Bind) Port() (uint16, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.port, b.open
}

// SetMark passes through to the inner bind.
func (b *Bind) SetMark(mark uint32) error { return b.inner.SetMark(mark) }

// Send sends through the relay to a relayed endpoint, and otherwise passes
// through to the inner bind untouched, so its batching and UDP
// segmentation offload stay in effect. Handshake initiations to a peer
// on the relay are also copied to its direct addresses (see relaybind.go).
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if re, ok := ep.(*relayEndpoint); ok {
		b.noteSend(re.dst, viaRelay)
		b.probe(bufs, re.dst, true)
		return b.sendRelay(bufs, re.dst)
	}
	if b.tracking.Load() {
		if ap, ok := addrOf(ep); ok {
			b.noteSend(ap, viaDirect)
			b.probe(bufs, ap, false)
		}
	}
	return b.inner.Send(bufs, ep)
}

// ParseEndpoint returns a relayed endpoint for an address UseRelay marked,
// and passes through to the inner bind otherwise.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		ap = unmapAP(ap)
		b.mu.Lock()
		relayed := b.relayRoutes[ap]
		b.mu.Unlock()
		if relayed {
			return &relayEndpoint{dst: ap}, nil
		}
	}
	return b.inner.ParseEndpoint(s)
}

// BatchSize passes through to the inner bind.
func (b *Bind) BatchSize() int { return b.inner.BatchSize() }

// errUnsupported names the capability the inner bind lacks.
func (b *Bind) errUnsupported(what string) error {
	return fmt.Errorf("the wrapped WireGuard bind (%T) cannot %s: %w", b.inner, what, errors.ErrUnsupported)
}

// BindSocketToInterface4 passes through to the inner bind (wireguard-windows
// uses it to pin the socket to the default-route interface).
func (b *Bind) BindSocketToInterface4(ifIndex uint32, blackhole bool) error {
	if x, ok := b.inner.(conn.BindSocketToInterface); ok {
		return x.BindSocketToInterface4(ifIndex, blackhole)
	}
	return b.errUnsupported("bind its IPv4 socket to an interface")
}

// BindSocketToInterface6 passes through to the inner bind.
func (b *Bind) BindSocketToInterface6(ifIndex uint32, blackhole bool) error {
	if x, ok := b.inner.(conn.BindSocketToInterface); ok {
		return x.BindSocketToInterface6(ifIndex, blackhole)
	}
	return b.errUnsupported("bind its IPv6 socket to an interface")
}

// PeekLookAtSocketFd4 passes through to the inner bind (wireguard-android
// uses it to protect the socket from its own VPN).
func (b *Bind) PeekLookAtSocketFd4() (int, error) {
	if x, ok := b.inner.(conn.PeekLookAtSocketFd); ok {
		return x.PeekLookAtSocketFd4()
	}
	return -1, b.errUnsupported("expose its IPv4 socket")
}

// PeekLookAtSocketFd6 passes through to the inner bind.
func (b *Bind) PeekLookAtSocketFd6() (int, error) {
	if x, ok := b.inner.(conn.PeekLookAtSocketFd); ok {
		return x.PeekLookAtSocketFd6()
	}
	return -1, b.errUnsupported("expose its IPv6 socket")
}

// receiveIPv4, receiveIPv6 and receive wrap a receive function of the inner
// bind. They differ only in name: wireguard-go names its receive goroutines
// after the function ("v4", "v6"), and keeps doing so in its log.
func (b *Bind) receiveIPv4(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return b.receiveFiltered(fn, packets, sizes, eps)
	}
}

func (b *Bind) receiveIPv6(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return b.receiveFiltered(fn, packets, sizes, eps)
	}
}

func (b *Bind) receive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return b.receiveFiltered(fn, packets, sizes, eps)
	}
}

// receiveFiltered reads a batch through fn and takes the STUN packets out.
func (b *Bind) receiveFiltered(fn conn.ReceiveFunc, packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	n, err := fn(packets, sizes, eps)
	if n > 0 {
		b.filter(packets[:n], sizes[:n], eps[:n])
	}
	return n, err
}

// filter removes STUN packets from a received batch in place. wireguard-go
// skips an element whose size is zero (conn.ReceiveFunc allows them), so
// nothing moves and the batch keeps its buffers.
func (b *Bind) filter(packets [][]byte, sizes []int, eps []conn.Endpoint) {
	for i, size := range sizes {
		if size < stunHeaderSize {
			continue
		}
		p := packets[i][:size]
		if classify(p) != kindSTUN {
			continue
		}
		sizes[i] = 0
		b.handleSTUN(p, eps[i])
	}
}

// handleSTUN hands a STUN packet to the Discover waiting for it. It runs on
// wireguard-go's receive goroutine, so it never blocks, and it parses only
// packets that carry the ID of a pending transaction: a flood of forged STUN
// costs a header check each.
func (b *Bind) handleSTUN(p []byte, ep conn.Endpoint) {
	if b.waiting.Load() == 0 {
		b.unsolicited.Add(1)
		return
	}
	var id TransactionID
	copy(id[:], p[8:stunHeaderSize])
	b.mu.Lock()
	tx := b.pending[id]
	b.mu.Unlock()
	if tx == nil {
		b.unsolicited.Add(1)
		return
	}
	from, err := netip.ParseAddrPort(ep.DstToString())
	if err != nil || from.Addr().Unmap() != tx.server.Addr() || from.Port() != tx.server.Port() {
		// Only the server we asked may answer (RFC 5389 §7.3.3 leaves this
		// to the client; the source check makes off-path forgery harder).
		b.unsolicited.Add(1)
		b.log.Debug("ignoring a STUN response from the wrong source", "from", ep.DstToString(), "server", tx.server)
		return
	}
	_, mapped, err := ParseBindingResponse(p)
	if err != nil {
		var er *ErrorResponse
		if !errors.As(err, &er) {
			// Malformed: keep waiting for a good answer (a retransmission
			// may still get one).
			b.log.Debug("ignoring an unusable STUN response", "server", tx.server, "err", err)
			return
		}
	}
	b.mu.Lock()
	if b.pending[id] == tx {
		delete(b.pending, id)
		b.waiting.Add(-1)
		tx.finish(result{addr: mapped, err: err})
	}
	b.mu.Unlock()
}
