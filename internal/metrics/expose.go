package metrics

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// ContentType is the Prometheus text exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Handler serves the metrics on any path (mount it at /metrics).
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			http.Error(w, "metrics are read with GET", http.StatusMethodNotAllowed)
			return
		}
		ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", ContentType)
		r.WriteText(ctx, w)
	})
}

// writer emits families: each HELP/TYPE header once, then its samples.
type writer struct {
	w *bufio.Writer
}

func (w writer) family(name, typ, help string) {
	fmt.Fprintf(w.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func (w writer) sample(name string, labels []string, v float64) {
	w.w.WriteString(name)
	if len(labels) > 0 {
		w.w.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				w.w.WriteByte(',')
			}
			w.w.WriteString(labels[i])
			w.w.WriteString(`="`)
			w.w.WriteString(escapeLabel(labels[i+1]))
			w.w.WriteByte('"')
		}
		w.w.WriteByte('}')
	}
	w.w.WriteByte(' ')
	w.w.WriteString(fmtFloat(v))
	w.w.WriteByte('\n')
}

func escapeLabel(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func formatFloat(f float64) string {
	if f == float64(int64(f)) && f < 1e15 && f > -1e15 {
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// WriteText writes every metric in the text format.
func (r *Registry) WriteText(ctx context.Context, out io.Writer) error {
	w := writer{bufio.NewWriter(out)}
	r.writeRequests(w)
	if r.src.Status != nil {
		if s, err := r.src.Status(ctx); err == nil {
			w.family("zlayer_overlayd_status_up", "gauge", "1 when the status snapshot behind the state metrics could be read.")
			w.sample("zlayer_overlayd_status_up", nil, 1)
			r.writeState(w, s)
		} else {
			w.family("zlayer_overlayd_status_up", "gauge", "1 when the status snapshot behind the state metrics could be read.")
			w.sample("zlayer_overlayd_status_up", nil, 0)
		}
	}
	if r.src.ReconcileRuns != nil {
		w.family("zlayer_overlayd_reconcile_runs_total", "counter", "Reconcile passes (at start and on the timer).")
		w.sample("zlayer_overlayd_reconcile_runs_total", nil, float64(r.src.ReconcileRuns()))
	}
	if r.src.EventsDropped != nil {
		w.family("zlayer_overlayd_events_dropped_total", "counter", "Events discarded because a client did not read them.")
		w.sample("zlayer_overlayd_events_dropped_total", nil, float64(r.src.EventsDropped()))
	}
	if r.src.DNS != nil {
		r.writeDNS(w)
	}
	return w.w.Flush()
}

func (r *Registry) sortedOps() []string {
	ops := make([]string, 0, len(r.ops))
	for op := range r.ops {
		ops = append(ops, op)
	}
	slices.Sort(ops)
	return ops
}

func (r *Registry) writeRequests(w writer) {
	ops := r.sortedOps()
	stats := func(op string) *opStats { return r.ops[op] }
	w.family("zlayer_overlayd_requests_total", "counter", "Requests answered, by op.")
	for _, op := range ops {
		w.sample("zlayer_overlayd_requests_total", []string{"op", op}, float64(stats(op).count.Load()))
	}
	w.family("zlayer_overlayd_request_errors_total", "counter", "Requests answered with an err response, by op.")
	for _, op := range ops {
		w.sample("zlayer_overlayd_request_errors_total", []string{"op", op}, float64(stats(op).errors.Load()))
	}
	const h = "zlayer_overlayd_request_duration_seconds"
	w.family(h, "histogram", "Time from a decoded request to its response, by op.")
	for _, op := range ops {
		s := stats(op)
		var cum uint64
		for i, le := range latencyBuckets {
			cum += s.buckets[i].Load()
			w.sample(h+"_bucket", []string{"op", op, "le", fmtFloat(le)}, float64(cum))
		}
		cum += s.buckets[len(latencyBuckets)].Load()
		w.sample(h+"_bucket", []string{"op", op, "le", "+Inf"}, float64(cum))
		w.sample(h+"_sum", []string{"op", op}, float64(s.sumNano.Load())/1e9)
		w.sample(h+"_count", []string{"op", op}, float64(cum))
	}
}

func (r *Registry) writeState(w writer, s protocol.StatusSnapshot) {
	now := r.now()
	type peerSet struct {
		scope string
		peers []protocol.PeerStatus
	}
	sets := []peerSet{{"global", s.Peers}}
	for _, sp := range s.ServicePeers {
		sets = append(sets, peerSet{"service:" + sp.Service, sp.Peers})
	}
	w.family("zlayer_overlayd_peers", "gauge", "WireGuard peers configured, by device scope.")
	for _, ps := range sets {
		w.sample("zlayer_overlayd_peers", []string{"scope", ps.scope}, float64(len(ps.peers)))
	}
	w.family("zlayer_overlayd_peer_last_handshake_age_seconds", "gauge", "Seconds since the peer's last handshake; peers that never completed one are absent.")
	for _, ps := range sets {
		for _, p := range ps.peers {
			if p.LastHandshakeUnixSecs == 0 {
				continue
			}
			age := max(now.Unix()-p.LastHandshakeUnixSecs, 0)
			w.sample("zlayer_overlayd_peer_last_handshake_age_seconds", []string{"scope", ps.scope, "public_key", p.PublicKey}, float64(age))
		}
	}
	w.family("zlayer_overlayd_peers_without_handshake", "gauge", "Peers that have not completed a handshake, by device scope.")
	for _, ps := range sets {
		n := 0
		for _, p := range ps.peers {
			if p.LastHandshakeUnixSecs == 0 {
				n++
			}
		}
		w.sample("zlayer_overlayd_peers_without_handshake", []string{"scope", ps.scope}, float64(n))
	}

	w.family("zlayer_overlayd_ip_allocated", "gauge", "Addresses handed out, by pool (the node slice or a service subnet).")
	if s.SlicePool != nil {
		w.sample("zlayer_overlayd_ip_allocated", []string{"pool", "slice", "cidr", s.SlicePool.CIDR}, float64(s.SlicePool.Used))
	}
	for _, svc := range s.Services {
		w.sample("zlayer_overlayd_ip_allocated", []string{"pool", "service:" + svc.Service, "cidr", svc.Subnet}, float64(svc.Used))
	}
	w.family("zlayer_overlayd_ip_free", "gauge", "Addresses still free, by pool.")
	if s.SlicePool != nil {
		w.sample("zlayer_overlayd_ip_free", []string{"pool", "slice", "cidr", s.SlicePool.CIDR}, float64(s.SlicePool.Free))
	}
	for _, svc := range s.Services {
		w.sample("zlayer_overlayd_ip_free", []string{"pool", "service:" + svc.Service, "cidr", svc.Subnet}, float64(svc.Free))
	}
	w.family("zlayer_overlayd_attachments", "gauge", "Containers and guests attached to an overlay.")
	w.sample("zlayer_overlayd_attachments", nil, float64(len(s.Attachments)+len(s.Guests)))
	w.family("zlayer_overlayd_services", "gauge", "Service overlays on this node.")
	w.sample("zlayer_overlayd_services", nil, float64(s.ServiceCount))
	w.family("zlayer_overlayd_reconcile_changes_total", "counter", "Kernel objects reconcile had to repair or remove.")
	w.sample("zlayer_overlayd_reconcile_changes_total", nil, float64(s.ReconcileChanges))
	if s.LastReconcile > 0 {
		w.family("zlayer_overlayd_last_reconcile_timestamp_seconds", "gauge", "Unix time of the last reconcile pass.")
		w.sample("zlayer_overlayd_last_reconcile_timestamp_seconds", nil, float64(s.LastReconcile))
	}
}

func (r *Registry) writeDNS(w writer) {
	st := r.src.DNS()
	w.family("zlayer_overlayd_dns_queries_total", "counter", "DNS queries received.")
	w.sample("zlayer_overlayd_dns_queries_total", nil, float64(st.Queries))
	w.family("zlayer_overlayd_dns_responses_total", "counter", "DNS answers sent, by response code.")
	codes := make([]string, 0, len(st.Responses))
	for c := range st.Responses {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	for _, c := range codes {
		w.sample("zlayer_overlayd_dns_responses_total", []string{"rcode", c}, float64(st.Responses[c]))
	}
	w.family("zlayer_overlayd_dns_dropped_total", "counter", "DNS queries not answered (not a query, or unparsable).")
	w.sample("zlayer_overlayd_dns_dropped_total", nil, float64(st.Dropped))
	w.family("zlayer_overlayd_dns_wrong_interface_total", "counter", "DNS queries and TCP connections refused because they arrived on an interface that is not loopback, a bridge, an overlay device or a container link.")
	w.sample("zlayer_overlayd_dns_wrong_interface_total", nil, float64(st.WrongInterface))
	w.family("zlayer_overlayd_dns_zone_answers_total", "counter", "DNS answers from the cluster zone.")
	w.sample("zlayer_overlayd_dns_zone_answers_total", nil, float64(st.ZoneAnswers))
	w.family("zlayer_overlayd_dns_forwarded_total", "counter", "Upstream resolutions started (after cache and coalescing).")
	w.sample("zlayer_overlayd_dns_forwarded_total", nil, float64(st.Forwarded))
	w.family("zlayer_overlayd_dns_upstream_errors_total", "counter", "Upstream attempts that failed.")
	w.sample("zlayer_overlayd_dns_upstream_errors_total", nil, float64(st.UpstreamErrors))
	w.family("zlayer_overlayd_dns_cache_hits_total", "counter", "Forwarded names answered from the cache.")
	w.sample("zlayer_overlayd_dns_cache_hits_total", nil, float64(st.CacheHits))
	w.family("zlayer_overlayd_dns_cache_misses_total", "counter", "Forwarded names not in the cache.")
	w.sample("zlayer_overlayd_dns_cache_misses_total", nil, float64(st.CacheMisses))
	w.family("zlayer_overlayd_dns_zone_names", "gauge", "Names in the cluster zone.")
	w.sample("zlayer_overlayd_dns_zone_names", nil, float64(st.Names))
}
