// Package engine executes requests: it owns the desired state of the node's
// overlay, commits every change before answering, drives the kernel through
// small interfaces, and reconciles the kernel back to the desired state.
package engine

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Features are the capabilities a hello answer advertises.
var Features = []string{"hello", "events"}

// Config wires an Engine.
type Config struct {
	Log *slog.Logger
	// Publish pushes an event to every connected client; nil drops events.
	Publish func(protocol.Event)
	// EventsDropped reports how many events clients failed to take.
	EventsDropped func() uint64
}

// Engine is safe for concurrent use.
type Engine struct {
	cfg Config
	log *slog.Logger

	locks keyedLocks

	mu             sync.Mutex // guards the fields below; never held across I/O
	nodeID         uint64
	expectedPubkey string

	stopping     atomic.Bool
	shutdownOnce sync.Once
	shutdownCh   chan struct{}
}

// New builds an engine.
func New(cfg Config) (*Engine, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Engine{cfg: cfg, log: log, shutdownCh: make(chan struct{})}, nil
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
	switch r := req.(type) {
	case protocol.Hello:
		return protocol.HelloResult{ProtocolVersion: protocol.Version, ServerVersion: version.Version, Features: Features}
	case protocol.Status:
		return e.status()
	case protocol.SetLocalNodeID:
		e.mu.Lock()
		e.nodeID = r.NodeID
		e.mu.Unlock()
		return protocol.OK{}
	case protocol.SetLocalWGPubkey:
		e.mu.Lock()
		e.expectedPubkey = r.Pubkey
		e.mu.Unlock()
		return protocol.OK{}
	case protocol.Shutdown:
		e.stopping.Store(true)
		e.shutdownOnce.Do(func() { close(e.shutdownCh) })
		return protocol.OK{}
	default:
		return errf("%s: not available yet in this build of zlayer-overlayd", req.Op())
	}
}

func (e *Engine) status() protocol.Response {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := protocol.StatusSnapshot{
		Version:        version.Version,
		NodeID:         e.nodeID,
		ExpectedPubkey: e.expectedPubkey,
	}
	if e.cfg.EventsDropped != nil {
		s.EventsDropped = e.cfg.EventsDropped()
	}
	return protocol.StatusResult{StatusSnapshot: s}
}

func errf(format string, args ...any) protocol.Err {
	return protocol.Err{Message: fmt.Sprintf(format, args...)}
}
