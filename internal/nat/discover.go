package nat

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

type result struct {
	addr netip.AddrPort
	err  error
}

// transaction is one Discover in flight: every retransmission of its
// request carries the same ID, and the first valid answer ends it.
type transaction struct {
	server netip.AddrPort
	done   chan result // buffered 1; written once, under Bind.mu
}

func (tx *transaction) finish(r result) { tx.done <- r }

// Discover sends a STUN Binding request to server from the WireGuard
// listening port and returns the reflexive address the server saw: where
// the node's WireGuard socket appears on the far side of any NAT. Requests
// are retransmitted per RFC 5389 §7.2.1 (250 ms, doubling, 5 requests,
// 7.75 s in all) unless ctx ends first. It fails with ErrNotOpen while the
// device is down.
func (b *Bind) Discover(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	if !server.Addr().IsValid() || server.Addr().IsUnspecified() || server.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("STUN server address %s is not usable: it needs an IP address and a port", server)
	}
	fail := func(format string, args ...any) (netip.AddrPort, error) {
		return netip.AddrPort{}, fmt.Errorf("STUN server %s: "+format, append([]any{server}, args...)...)
	}
	ep, err := b.inner.ParseEndpoint(server.String())
	if err != nil {
		return fail("%w", err)
	}
	req, id, err := newBindingRequest()
	if err != nil {
		return fail("%w", err)
	}

	tx := &transaction{server: server, done: make(chan result, 1)}
	b.mu.Lock()
	if !b.open {
		b.mu.Unlock()
		return fail("%w", ErrNotOpen)
	}
	port := b.port
	b.pending[id] = tx
	b.waiting.Add(1)
	b.mu.Unlock()
	defer b.forget(id, tx)

	wait := b.rto
	var total time.Duration
	for range b.tries {
		if err := b.inner.Send([][]byte{req}, ep); err != nil {
			if _, open := b.Port(); !open {
				return fail("%w", ErrNotOpen)
			}
			return fail("send a binding request from WireGuard port %d: %w", port, err)
		}
		timer := time.NewTimer(wait)
		select {
		case r := <-tx.done:
			timer.Stop()
			if r.err != nil {
				return fail("%w", r.err)
			}
			return r.addr, nil
		case <-ctx.Done():
			timer.Stop()
			return fail("no answer from WireGuard port %d before the context ended: %w", port, ctx.Err())
		case <-timer.C:
		}
		total += wait
		wait *= 2
	}
	return fail("no answer to %d binding requests from WireGuard port %d in %v (server down, UDP blocked, or the answer not routed back to this port)", b.tries, port, total)
}

// forget drops a transaction that did not get an answer.
func (b *Bind) forget(id TransactionID, tx *transaction) {
	b.mu.Lock()
	if b.pending[id] == tx {
		delete(b.pending, id)
		b.waiting.Add(-1)
	}
	b.mu.Unlock()
}
