package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/nat"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/conn"
)

// NATConfig turns on NAT traversal: STUN sent from the global device's
// WireGuard port, so the reflexive address found is the one peers must use.
type NATConfig struct {
	// Servers are STUN servers ("host" or "host:port", default port 3478).
	// There are none by default: a cluster whose nodes are not behind NAT
	// needs none, and we do not call third parties unasked.
	Servers []string
}

type natState struct {
	cfg NATConfig

	mu        sync.Mutex
	bind      *nat.Bind // the global device's bind; nil before it exists
	result    nat.Result
	last      time.Time
	lastErr   string
	probing   bool
	refreshed chan struct{} // closed and replaced after every probe
}

func (e *Engine) enableNAT(cfg NATConfig) {
	e.nat = &natState{cfg: cfg, refreshed: make(chan struct{})}
	e.hooks.statusExtra = append(e.hooks.statusExtra, e.natStatus)
}

// globalBind is the conn.Bind for a new global device: with STUN servers
// configured it is a demultiplexing bind; otherwise nil (wireguard-go's own,
// which keeps its route listener for multi-homed nodes).
func (e *Engine) globalBind() conn.Bind {
	if e.nat == nil || len(e.nat.cfg.Servers) == 0 {
		return nil
	}
	b := nat.NewBind(nil, e.log.With("component", "nat"))
	e.nat.mu.Lock()
	e.nat.bind = b
	e.nat.mu.Unlock()
	return b
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
	n.mu.Unlock()
	if b == nil {
		return errors.New("the global device has no NAT-traversal bind yet")
	}
	servers, rerr := nat.ResolveServers(ctx, n.cfg.Servers)
	if len(servers) == 0 {
		n.record(nat.Result{}, rerr)
		return rerr
	}
	res, err := b.Probe(ctx, servers)
	if err == nil && rerr != nil {
		res.Errors = append(res.Errors, rerr)
	}
	n.mu.Lock()
	prev := n.result.Reflexive
	n.mu.Unlock()
	n.record(res, err)
	if err != nil {
		e.log.Warn("STUN probe failed", "err", err)
		return err
	}
	if !slices.Equal(prev, res.Reflexive) {
		e.log.Info("reflexive endpoint", "endpoints", res.Reflexive, "nat", res.Behaviour, "previous", prev)
	}
	return nil
}

func (n *natState) record(res nat.Result, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
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
	close(n.refreshed)
	n.refreshed = make(chan struct{})
}

// probeSoon runs one probe in the background (after the global device came
// up), so status shows the reflexive endpoint without waiting for the main
// daemon's first nat_tick.
func (e *Engine) probeSoon() {
	if e.nat == nil || len(e.nat.cfg.Servers) == 0 {
		return
	}
	e.nat.mu.Lock()
	if e.nat.probing {
		e.nat.mu.Unlock()
		return
	}
	e.nat.probing = true
	e.nat.mu.Unlock()
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
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
			case <-e.bgStop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		e.probeNAT(ctx)
	}()
}

func (e *Engine) natBindPort() (uint16, bool) {
	e.nat.mu.Lock()
	b := e.nat.bind
	e.nat.mu.Unlock()
	if b == nil {
		return 0, false
	}
	return b.Port()
}

func (e *Engine) natStatus(s *protocol.StatusSnapshot) {
	var enabled bool
	e.locked(func() { enabled = e.st.global != nil && e.st.global.rec.NATEnabled })
	n := e.nat
	n.mu.Lock()
	defer n.mu.Unlock()
	ns := &protocol.NATStatus{Enabled: enabled && len(n.cfg.Servers) > 0, STUNServers: n.cfg.Servers, Behaviour: n.result.Behaviour, LastError: n.lastErr}
	for _, r := range n.result.Reflexive {
		ns.ReflexiveAddrs = append(ns.ReflexiveAddrs, r.String())
	}
	if !n.last.IsZero() {
		ns.LastRefreshUnix = n.last.Unix()
	}
	if e.fw != nil {
		ns.Masquerade = e.fw.cfg.Masquerade
	}
	s.NAT = ns
}
