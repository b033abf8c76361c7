// Package metrics serves zlayer-overlayd's operator metrics in the
// Prometheus text exposition format (version 0.0.4): requests, errors and
// latency by op, peers and their handshake age, DNS answers by rcode,
// address pools, reconcile runs and dropped events.
//
// The format is written by hand: it is a few lines of text, and the
// request path only touches preallocated atomic counters (no lock, no
// allocation per request).
package metrics

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// latencyBuckets are the upper bounds (seconds) of the request latency
// histogram: from a status answered in microseconds to a slow attach.
var latencyBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

type opStats struct {
	count   atomic.Uint64
	errors  atomic.Uint64
	sumNano atomic.Uint64
	buckets []atomic.Uint64 // cumulative at export; stored per bucket, +Inf last
}

// Sources are the read-only views a scrape takes of the daemon. Each may
// be nil when the subsystem is off.
type Sources struct {
	// Status answers what a status request answers (peers, pools,
	// reconcile changes).
	Status func(ctx context.Context) (protocol.StatusSnapshot, error)
	// DNS is the embedded DNS server's counters.
	DNS func() dns.Stats
	// EventsDropped is how many events clients failed to take.
	EventsDropped func() uint64
	// ReconcileRuns is how many reconcile passes ran.
	ReconcileRuns func() uint64
}

// Registry counts requests and renders every metric.
type Registry struct {
	src   Sources
	ops   map[string]*opStats // fixed at construction: read without a lock
	other *opStats
	now   func() time.Time
}

// New makes a registry for every op the protocol knows.
func New(src Sources) *Registry {
	r := &Registry{src: src, ops: map[string]*opStats{}, now: time.Now}
	for _, op := range protocol.Ops() {
		r.ops[op] = newOpStats()
	}
	r.other = newOpStats()
	return r
}

func newOpStats() *opStats {
	return &opStats{buckets: make([]atomic.Uint64, len(latencyBuckets)+1)}
}

// Observe records one answered request.
func (r *Registry) Observe(op string, took time.Duration, failed bool) {
	s := r.ops[op]
	if s == nil {
		s = r.other
	}
	s.count.Add(1)
	if failed {
		s.errors.Add(1)
	}
	s.sumNano.Add(uint64(max(took, 0)))
	secs := took.Seconds()
	i := len(latencyBuckets)
	for j, le := range latencyBuckets {
		if secs <= le {
			i = j
			break
		}
	}
	s.buckets[i].Add(1)
}

// RequestHandler is the shape of the daemon's request handler
// (ipc.Handler), repeated here so this package does not depend on ipc.
type RequestHandler interface {
	Handle(ctx context.Context, req protocol.Request) protocol.Response
}

// Wrap returns a handler that times every request through h.
func (r *Registry) Wrap(h RequestHandler) RequestHandler {
	return observed{h: h, r: r}
}

type observed struct {
	h RequestHandler
	r *Registry
}

func (o observed) Handle(ctx context.Context, req protocol.Request) protocol.Response {
	start := time.Now()
	resp := o.h.Handle(ctx, req)
	_, failed := resp.(protocol.Err)
	o.r.Observe(req.Op(), time.Since(start), failed)
	return resp
}

func fmtFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	case math.IsNaN(f):
		return "NaN"
	}
	return formatFloat(f)
}
