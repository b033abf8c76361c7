package nat

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// The Bind's side of TURN relaying.
//
// WireGuard knows nothing of relays: a peer reached through our allocation
// simply has a relayEndpoint as its endpoint. Such an endpoint comes from
// two places. ParseEndpoint returns one for an address that UseRelay
// marked, which is how the engine moves a peer onto the relay (it sets the
// endpoint through UAPI as for any other address). And every packet that
// arrives through the allocation carries a relayEndpoint naming the
// address the server says it came from, so WireGuard's roaming (a peer's
// endpoint follows its last authenticated packet) answers through the
// relay whatever the peer sends through, and goes back to a direct
// endpoint as soon as the peer's packets arrive directly again.
//
// While a peer is reached through a relay, the Bind also sends copies to
// the peer's direct addresses (SetProbes): of every handshake initiation,
// and of one transport message (data or keepalive) every probeEvery. Both
// sides do so, so the copies also punch the holes a direct path needs.
// Once the peer gets a copy directly, WireGuard's roaming points its
// endpoint at our direct address and its packets come back directly, and
// ours follow them; if no copy gets through, they are lost and the relay
// carries on. A duplicate never confuses WireGuard: the second copy of a
// message fails its replay check.

// relayEndpoint is a peer address reached through our TURN allocation.
type relayEndpoint struct {
	dst netip.AddrPort
}

var _ conn.Endpoint = (*relayEndpoint)(nil)

func (e *relayEndpoint) ClearSrc()           {}
func (e *relayEndpoint) SrcToString() string { return "" }
func (e *relayEndpoint) DstToString() string { return e.dst.String() }
func (e *relayEndpoint) DstIP() netip.Addr   { return e.dst.Addr() }
func (e *relayEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// DstToBytes identifies the sender for WireGuard's cookie (mac2): the
// relayed address the packet came from, marked as relayed.
func (e *relayEndpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return append(b, 'r')
}

// Paths a Bind reports for an address.
const (
	PathDirect = "direct"
	PathRelay  = "relay"
)

const (
	viaDirect uint32 = iota + 1
	viaRelay
)

// relayPacket is one datagram that arrived through the allocation.
type relayPacket struct {
	data []byte
	from netip.AddrPort
}

// relayQueue bounds what waits for wireguard-go's relay receive goroutine.
const relayQueue = 1024

// AttachRelay makes r the Bind's relay (nil detaches it) and returns the
// previous one. The caller starts and closes relays.
func (b *Bind) AttachRelay(r *Relay) *Relay {
	if r != nil {
		r.deliver = b.deliverRelayed
	}
	return b.relay.Swap(r)
}

// Relay is the attached relay, or nil.
func (b *Bind) Relay() *Relay { return b.relay.Load() }

// UseRelay marks addr to be reached through the relay (on) or directly:
// the next endpoint WireGuard is given for addr (UAPI endpoint=) is
// relayed or direct accordingly.
func (b *Bind) UseRelay(addr netip.AddrPort, on bool) {
	addr = unmapAP(addr)
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.relayRoutes[addr] = true
	} else {
		delete(b.relayRoutes, addr)
	}
}

// SetProbes sets the direct addresses to which copies of what is sent to
// target go (nil clears them).
func (b *Bind) SetProbes(target netip.AddrPort, direct []netip.AddrPort) {
	target = unmapAP(target)
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.probes.Load()
	next := make(map[netip.AddrPort]*probeSet, len(*old)+1)
	for k, v := range *old {
		next[k] = v
	}
	delete(next, target)
	set := &probeSet{}
	if prev := (*old)[target]; prev != nil {
		set.last.Store(prev.last.Load())
	}
	for _, d := range direct {
		// d may be target itself: a peer relayed to its own direct
		// address is probed there directly.
		d = unmapAP(d)
		if !d.IsValid() {
			continue
		}
		ep, err := b.inner.ParseEndpoint(d.String())
		if err != nil {
			continue
		}
		set.alts = append(set.alts, probeTarget{d, ep})
	}
	if len(set.alts) > 0 {
		next[target] = set
	}
	b.probes.Store(&next)
	if len(next) > 0 {
		b.tracking.Store(true)
	}
}

// PruneProbes keeps the probes of the targets keep reports true for.
func (b *Bind) PruneProbes(keep func(netip.AddrPort) bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.probes.Load()
	next := make(map[netip.AddrPort]*probeSet, len(*old))
	for k, v := range *old {
		if keep(k) {
			next[k] = v
		}
	}
	b.probes.Store(&next)
}

// PathTo says how the last packet WireGuard sent to addr left: through the
// relay, or directly (also for an address never relayed).
func (b *Bind) PathTo(addr netip.AddrPort) string {
	if v, ok := b.vias.Load(unmapAP(addr)); ok && v.(*atomic.Uint32).Load() == viaRelay {
		return PathRelay
	}
	return PathDirect
}

// PrunePaths forgets the paths of addresses keep reports false for.
func (b *Bind) PrunePaths(keep func(netip.AddrPort) bool) {
	b.vias.Range(func(k, _ any) bool {
		if !keep(k.(netip.AddrPort)) {
			b.vias.Delete(k)
		}
		return true
	})
}

// RelayDrops counts relayed packets dropped because wireguard-go did not
// take them fast enough.
func (b *Bind) RelayDrops() uint64 { return b.relayDrops.Load() }

func (b *Bind) noteSend(addr netip.AddrPort, via uint32) {
	if v, ok := b.vias.Load(addr); ok {
		v.(*atomic.Uint32).Store(via)
		return
	}
	if via == viaRelay {
		v := new(atomic.Uint32)
		v.Store(via)
		b.vias.Store(addr, v)
		b.tracking.Store(true)
	}
}

// deliverRelayed queues a datagram that arrived through the relay for the
// relay receive function. Called by the relay's reader; never blocks.
func (b *Bind) deliverRelayed(p []byte, from netip.AddrPort) {
	if classify(p) != kindWireGuard {
		return
	}
	select {
	case b.relayIn <- relayPacket{data: append([]byte(nil), p...), from: from}:
	default:
		b.relayDrops.Add(1)
	}
}

// receiveRelay is the receive function of the relay: one more goroutine
// of wireguard-go's reads it, like the v4 and v6 sockets.
func (b *Bind) receiveRelay(done <-chan struct{}) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p relayPacket
		select {
		case p = <-b.relayIn:
		case <-done:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			if len(p.data) <= len(packets[n]) {
				sizes[n] = copy(packets[n], p.data)
				eps[n] = &relayEndpoint{dst: p.from}
				n++
			}
			if n == len(packets) {
				return n, nil
			}
			select {
			case p = <-b.relayIn:
				continue
			default:
			}
			return n, nil
		}
	}
}

// sendRelay sends bufs to dst through the relay.
func (b *Bind) sendRelay(bufs [][]byte, dst netip.AddrPort) error {
	r := b.relay.Load()
	if r == nil {
		return errNoAllocation
	}
	var first error
	for _, p := range bufs {
		if err := r.send(p, dst); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// probeTarget is a direct address that gets copies.
type probeTarget struct {
	addr netip.AddrPort
	ep   conn.Endpoint
}

// probeSet is the direct addresses of one relayed target, and when a
// transport message was last copied to them.
type probeSet struct {
	alts []probeTarget
	last atomic.Int64 // unix nanoseconds
}

// probeEvery is how often a transport message is copied to a relayed
// peer's direct addresses: rarely enough to cost nothing, often enough to
// keep a punched hole open (conntrack forgets an unanswered UDP flow
// after 30 s).
const probeEvery = 5 * time.Second

// probe sends copies of the handshake initiations in bufs, and of one
// transport message every probeEvery, to target's direct addresses;
// relayed says bufs go through the relay (else they go to target
// directly, which then needs no copy).
func (b *Bind) probe(bufs [][]byte, target netip.AddrPort, relayed bool) {
	probes := *b.probes.Load()
	if len(probes) == 0 {
		return
	}
	set := probes[target]
	if set == nil {
		return
	}
	for _, p := range bufs {
		switch {
		case isHandshakeInitiation(p):
		case isTransport(p):
			now := time.Now().UnixNano()
			last := set.last.Load()
			if now-last < int64(probeEvery) || !set.last.CompareAndSwap(last, now) {
				continue
			}
		default:
			continue
		}
		for _, alt := range set.alts {
			if relayed || alt.addr != target {
				b.inner.Send([][]byte{p}, alt.ep)
			}
		}
	}
}

// isHandshakeInitiation: type 1, 148 bytes (WireGuard's whitepaper §5.4.2).
func isHandshakeInitiation(p []byte) bool {
	return len(p) == 148 && binary.LittleEndian.Uint32(p) == 1
}

// isTransport: a transport message (type 4), data or keepalive (32 bytes
// and more).
func isTransport(p []byte) bool {
	return len(p) >= 32 && binary.LittleEndian.Uint32(p) == 4
}

// addrOf is the destination of a direct endpoint.
func addrOf(ep conn.Endpoint) (netip.AddrPort, bool) {
	if se, ok := ep.(*conn.StdNetEndpoint); ok {
		return unmapAP(se.AddrPort), true
	}
	ap, err := netip.ParseAddrPort(ep.DstToString())
	return unmapAP(ap), err == nil
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
