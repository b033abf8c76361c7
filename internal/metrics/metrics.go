// Package metrics serves zlayer-overlayd's operator metrics with the
// Prometheus Go client: requests, errors and latency by op; peers, their
// traffic and handshake age; DNS answers by rcode; address pools;
// reconcile passes, their duration and failures; firewall rebuild
// failures; the Go runtime and the process; and the build.
//
// The request path touches only metrics resolved when the registry is
// built (one map lookup, a counter and a histogram observation: atomics,
// no lock, no allocation). Everything read from the daemon's state is read
// once per scrape, from one status snapshot.
package metrics

import (
	"context"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

const namespace = "zlayer_overlayd"

// latencyBuckets are the upper bounds (seconds) of the request latency
// histogram: from a status answered in microseconds to a slow attach.
var latencyBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// reconcileBuckets are the upper bounds (seconds) of the reconcile pass
// histogram: an idle node takes milliseconds, a start that rebuilds
// hundreds of links seconds.
var reconcileBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// DefaultPeerLimit is how many peers get series of their own when
// Sources.PeerLimit is 0.
const DefaultPeerLimit = 256

// unknownOp labels requests whose op the protocol package does not know.
const unknownOp = "unknown"

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
	// PeerLimit caps how many peers get per-peer series (traffic,
	// handshake age, health), so a cluster of thousands of nodes cannot
	// blow up the scrape: the first PeerLimit peers by (scope, public
	// key) get them, the rest are counted in
	// zlayer_overlayd_peer_series_omitted. 0 means DefaultPeerLimit; a
	// negative limit exports no per-peer series.
	PeerLimit int
}

type opMetrics struct {
	requests prometheus.Counter
	errors   prometheus.Counter
	duration prometheus.Observer
}

// Registry counts requests and serves every metric.
type Registry struct {
	reg *prometheus.Registry
	ops map[string]*opMetrics // fixed at construction: read without a lock

	reconcileDuration prometheus.Histogram
	reconcileErrors   prometheus.Counter
	firewallErrors    prometheus.Counter

	now func() time.Time
}

// New builds a registry for every op the protocol knows, with the Go
// runtime and process collectors and the build info.
func New(src Sources) *Registry {
	r := &Registry{reg: prometheus.NewRegistry(), ops: map[string]*opMetrics{}, now: time.Now}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_total", Help: "Requests answered, by op.",
	}, []string{"op"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "request_errors_total", Help: "Requests answered with an err response, by op.",
	}, []string{"op"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "request_duration_seconds", Help: "Time from a decoded request to its response, by op.",
		Buckets: latencyBuckets,
	}, []string{"op"})
	for _, op := range append(protocol.Ops(), unknownOp) {
		r.ops[op] = &opMetrics{
			requests: requests.WithLabelValues(op),
			errors:   errs.WithLabelValues(op),
			duration: duration.WithLabelValues(op),
		}
	}
	r.reconcileDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "reconcile_duration_seconds", Help: "Time one reconcile pass took (at start and on the timer).",
		Buckets: reconcileBuckets,
	})
	r.reconcileErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "reconcile_errors_total", Help: "Reconcile passes that could not make every repair (the log says which).",
	})
	r.firewallErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "firewall_sync_errors_total", Help: "Failed rebuilds or removals of our nftables table (status.firewall.last_error has the last one).",
	})
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info", Help: "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": version.Version, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	r.reg.MustRegister(
		requests, errs, duration,
		r.reconcileDuration, r.reconcileErrors, r.firewallErrors, buildInfo,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStateCollector(src, func() time.Time { return r.now() }),
	)
	return r
}

// Gatherer is the registry behind the handler (tests, other exporters).
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Observe records one answered request.
func (r *Registry) Observe(op string, took time.Duration, failed bool) {
	m := r.ops[op]
	if m == nil {
		m = r.ops[unknownOp]
	}
	m.requests.Inc()
	if failed {
		m.errors.Inc()
	}
	m.duration.Observe(max(took, 0).Seconds())
}

// ReconcileDone records one reconcile pass (engine.Observer).
func (r *Registry) ReconcileDone(took time.Duration, err error) {
	r.reconcileDuration.Observe(max(took, 0).Seconds())
	if err != nil {
		r.reconcileErrors.Inc()
	}
}

// FirewallSyncFailed records a failed nftables rebuild (engine.Observer).
func (r *Registry) FirewallSyncFailed() { r.firewallErrors.Inc() }

// Handler serves the metrics on any path (mount it at /metrics), in the
// format the scraper asks for: the Prometheus text format, or OpenMetrics.
func (r *Registry) Handler() http.Handler {
	h := promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorHandling:     promhttp.ContinueOnError,
		Timeout:           15 * time.Second,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			http.Error(w, "metrics are read with GET", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, req)
	})
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
