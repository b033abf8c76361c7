package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// scrape fetches the handler over real HTTP in the Prometheus text format
// and parses it with Prometheus's own parser, which rejects what a
// Prometheus server would reject. Series are keyed name{label="value",...}
// with labels sorted by name; histograms give _bucket, _sum and _count.
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("content type %q", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	return flatten(fams)
}

func series(name string, labels []*dto.LabelPair, extra ...string) string {
	var parts []string
	for _, l := range labels {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	for i := 0; i+1 < len(extra); i += 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", extra[i], extra[i+1]))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return name
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

func flatten(fams map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[series(name, m.GetLabel())] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[series(name, m.GetLabel())] = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				out[series(name, m.GetLabel())] = m.GetUntyped().GetValue()
			case m.GetHistogram() != nil:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					out[series(name+"_bucket", m.GetLabel(), "le", model.SampleValue(b.GetUpperBound()).String())] = float64(b.GetCumulativeCount())
				}
				out[series(name+"_bucket", m.GetLabel(), "le", "+Inf")] = float64(h.GetSampleCount())
				out[series(name+"_sum", m.GetLabel())] = h.GetSampleSum()
				out[series(name+"_count", m.GetLabel())] = float64(h.GetSampleCount())
			case m.GetSummary() != nil:
				out[series(name+"_count", m.GetLabel())] = float64(m.GetSummary().GetSampleCount())
			}
		}
	}
	return out
}

func expect(t *testing.T, m map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		got, ok := m[k]
		if !ok {
			t.Errorf("missing %s", k)
		} else if got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
}

type fakeHandler struct{}

func (fakeHandler) Handle(ctx context.Context, req protocol.Request) protocol.Response {
	if _, ok := req.(protocol.AllocateIP); ok {
		return protocol.Err{Message: "allocate_ip: no overlay"}
	}
	return protocol.OK{}
}

func TestScrapeCountsRequestsErrorsAndLatency(t *testing.T) {
	r := New(Sources{})
	h := r.Wrap(fakeHandler{})
	for range 3 {
		h.Handle(context.Background(), protocol.Status{})
	}
	h.Handle(context.Background(), protocol.AllocateIP{Service: "web"})
	h.Handle(context.Background(), protocol.RawRequest(`{"op":"no_such_op"}`))
	r.Observe("attach_container", 3*time.Millisecond, false)
	r.Observe("attach_container", 2*time.Second, true)

	m := scrape(t, r.Handler())
	expect(t, m, map[string]float64{
		`zlayer_overlayd_requests_total{op="status"}`:                                        3,
		`zlayer_overlayd_request_errors_total{op="status"}`:                                  0,
		`zlayer_overlayd_requests_total{op="allocate_ip"}`:                                   1,
		`zlayer_overlayd_request_errors_total{op="allocate_ip"}`:                             1,
		`zlayer_overlayd_requests_total{op="unknown"}`:                                       1,
		`zlayer_overlayd_requests_total{op="attach_container"}`:                              2,
		`zlayer_overlayd_request_errors_total{op="attach_container"}`:                        1,
		`zlayer_overlayd_request_duration_seconds_bucket{le="0.0025",op="attach_container"}`: 0,
		`zlayer_overlayd_request_duration_seconds_bucket{le="0.005",op="attach_container"}`:  1,
		`zlayer_overlayd_request_duration_seconds_bucket{le="1",op="attach_container"}`:      1,
		`zlayer_overlayd_request_duration_seconds_bucket{le="2.5",op="attach_container"}`:    2,
		`zlayer_overlayd_request_duration_seconds_bucket{le="+Inf",op="attach_container"}`:   2,
		`zlayer_overlayd_request_duration_seconds_count{op="attach_container"}`:              2,
		`zlayer_overlayd_request_duration_seconds_count{op="status"}`:                        3,
		`zlayer_overlayd_requests_total{op="backup"}`:                                        0,
	})
	if s := m[`zlayer_overlayd_request_duration_seconds_sum{op="attach_container"}`]; s < 2.003 || s > 2.0031 {
		t.Errorf("attach latency sum %v, want 2.003", s)
	}
}

func TestScrapeState(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	yes, no := true, false
	snap := protocol.StatusSnapshot{
		Peers: []protocol.PeerStatus{
			{PublicKey: "a+b/c=", LastHandshakeUnixSecs: now.Unix() - 42, RxBytes: 1234, TxBytes: 99, Healthy: &yes},
			{PublicKey: "never", Healthy: &no},
		},
		ServicePeers:     []protocol.ServicePeerSet{{Service: "db", Peers: []protocol.PeerStatus{{PublicKey: "k2", LastHandshakeUnixSecs: now.Unix() - 7}}}},
		SlicePool:        &protocol.PoolStatus{CIDR: "10.200.3.0/28", Used: 3, Free: 10},
		Services:         []protocol.ServiceStatus{{Service: "web", Subnet: "10.200.3.16/28", Used: 5, Free: 8}},
		Attachments:      make([]protocol.AttachStatus, 4),
		ServiceCount:     1,
		ReconcileChanges: 9,
		LastReconcile:    now.Unix() - 1,
	}
	r := New(Sources{
		Status:        func(context.Context) (protocol.StatusSnapshot, error) { return snap, nil },
		EventsDropped: func() uint64 { return 17 },
		ReconcileRuns: func() uint64 { return 5 },
		DNS: func() dns.Stats {
			return dns.Stats{Queries: 100, Responses: map[string]uint64{"NOERROR": 90, "NXDOMAIN": 10}, Names: 12}
		},
	})
	r.now = func() time.Time { return now }
	m := scrape(t, r.Handler())
	expect(t, m, map[string]float64{
		`zlayer_overlayd_status_up`:                                                           1,
		`zlayer_overlayd_peers{scope="global"}`:                                               2,
		`zlayer_overlayd_peers{scope="service:db"}`:                                           1,
		`zlayer_overlayd_peer_last_handshake_age_seconds{public_key="a+b/c=",scope="global"}`: 42,
		`zlayer_overlayd_peer_last_handshake_age_seconds{public_key="k2",scope="service:db"}`: 7,
		`zlayer_overlayd_peer_receive_bytes_total{public_key="a+b/c=",scope="global"}`:        1234,
		`zlayer_overlayd_peer_transmit_bytes_total{public_key="a+b/c=",scope="global"}`:       99,
		`zlayer_overlayd_peer_receive_bytes_total{public_key="never",scope="global"}`:         0,
		`zlayer_overlayd_peer_healthy{public_key="a+b/c=",scope="global"}`:                    1,
		`zlayer_overlayd_peer_healthy{public_key="never",scope="global"}`:                     0,
		`zlayer_overlayd_peer_series_omitted`:                                                 0,
		`zlayer_overlayd_peers_without_handshake{scope="global"}`:                             1,
		`zlayer_overlayd_ip_allocated{cidr="10.200.3.0/28",pool="slice"}`:                     3,
		`zlayer_overlayd_ip_free{cidr="10.200.3.16/28",pool="service:web"}`:                   8,
		`zlayer_overlayd_attachments`:                                                         4,
		`zlayer_overlayd_services`:                                                            1,
		`zlayer_overlayd_reconcile_runs_total`:                                                5,
		`zlayer_overlayd_reconcile_changes_total`:                                             9,
		`zlayer_overlayd_last_reconcile_timestamp_seconds`:                                    float64(now.Unix() - 1),
		`zlayer_overlayd_events_dropped_total`:                                                17,
		`zlayer_overlayd_dns_queries_total`:                                                   100,
		`zlayer_overlayd_dns_responses_total{rcode="NXDOMAIN"}`:                               10,
		`zlayer_overlayd_dns_responses_total{rcode="NOERROR"}`:                                90,
		`zlayer_overlayd_dns_zone_names`:                                                      12,
	})
	if _, ok := m[`zlayer_overlayd_peer_last_handshake_age_seconds{public_key="never",scope="global"}`]; ok {
		t.Error("a peer without a handshake has an age")
	}
	if _, ok := m[`zlayer_overlayd_peer_healthy{public_key="k2",scope="service:db"}`]; ok {
		t.Error("a peer without a health verdict has a health series")
	}
}

// Past the peer limit, the first peers by (scope, key) keep their series
// and the rest are counted, so a scrape's size stays bounded.
func TestPeerSeriesAreCapped(t *testing.T) {
	var peers []protocol.PeerStatus
	for i := 9; i >= 0; i-- {
		peers = append(peers, protocol.PeerStatus{PublicKey: fmt.Sprintf("key%d", i), RxBytes: uint64(i)})
	}
	snap := protocol.StatusSnapshot{Peers: peers}
	r := New(Sources{PeerLimit: 3, Status: func(context.Context) (protocol.StatusSnapshot, error) { return snap, nil }})
	m := scrape(t, r.Handler())
	var rx []string
	for k := range m {
		if strings.HasPrefix(k, "zlayer_overlayd_peer_receive_bytes_total{") {
			rx = append(rx, k)
		}
	}
	sort.Strings(rx)
	want := []string{
		`zlayer_overlayd_peer_receive_bytes_total{public_key="key0",scope="global"}`,
		`zlayer_overlayd_peer_receive_bytes_total{public_key="key1",scope="global"}`,
		`zlayer_overlayd_peer_receive_bytes_total{public_key="key2",scope="global"}`,
	}
	if fmt.Sprint(rx) != fmt.Sprint(want) {
		t.Fatalf("per-peer series %v, want %v", rx, want)
	}
	expect(t, m, map[string]float64{`zlayer_overlayd_peer_series_omitted`: 7, `zlayer_overlayd_peers{scope="global"}`: 10})

	r = New(Sources{PeerLimit: -1, Status: func(context.Context) (protocol.StatusSnapshot, error) { return snap, nil }})
	m = scrape(t, r.Handler())
	expect(t, m, map[string]float64{`zlayer_overlayd_peer_series_omitted`: 10})
}

// The Go runtime, the process and the build are described, as every Go
// service's dashboards expect.
func TestRuntimeProcessAndBuildInfo(t *testing.T) {
	m := scrape(t, New(Sources{}).Handler())
	want := []string{
		"go_goroutines", "go_memstats_heap_alloc_bytes", "go_gc_duration_seconds_count",
		fmt.Sprintf(`zlayer_overlayd_build_info{goversion=%q,version=%q}`, runtime.Version(), version.Version),
	}
	if runtime.GOOS == "linux" {
		want = append(want, "process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total")
	}
	for _, k := range want {
		if _, ok := m[k]; !ok {
			t.Errorf("missing %s", k)
		}
	}
	if m["go_goroutines"] < 1 {
		t.Errorf("go_goroutines = %v", m["go_goroutines"])
	}
	if runtime.GOOS == "linux" && m["process_resident_memory_bytes"] <= 0 {
		t.Errorf("process_resident_memory_bytes = %v", m["process_resident_memory_bytes"])
	}
}

// The engine's observer hooks land in the reconcile histogram and the
// error counters.
func TestReconcileAndFirewallObservations(t *testing.T) {
	r := New(Sources{})
	r.ReconcileDone(3*time.Millisecond, nil)
	r.ReconcileDone(2*time.Second, errors.New("restore zl-prod-g: no such device"))
	r.FirewallSyncFailed()
	m := scrape(t, r.Handler())
	expect(t, m, map[string]float64{
		`zlayer_overlayd_reconcile_duration_seconds_bucket{le="0.0025"}`: 0,
		`zlayer_overlayd_reconcile_duration_seconds_bucket{le="0.005"}`:  1,
		`zlayer_overlayd_reconcile_duration_seconds_bucket{le="2.5"}`:    2,
		`zlayer_overlayd_reconcile_duration_seconds_count`:               2,
		`zlayer_overlayd_reconcile_errors_total`:                         1,
		`zlayer_overlayd_firewall_sync_errors_total`:                     1,
	})
}

// A scraper that asks for OpenMetrics gets it.
func TestOpenMetricsOnRequest(t *testing.T) {
	srv := httptest.NewServer(New(Sources{}).Handler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Fatalf("content type %q", ct)
	}
	if !strings.HasSuffix(string(body), "# EOF\n") || !strings.Contains(string(body), "zlayer_overlayd_build_info{") {
		t.Fatalf("not an OpenMetrics exposition:\n%.400s", body)
	}
}

func TestStatusFailureIsVisible(t *testing.T) {
	r := New(Sources{Status: func(context.Context) (protocol.StatusSnapshot, error) {
		return protocol.StatusSnapshot{}, errors.New("shutting down")
	}})
	m := scrape(t, r.Handler())
	if v, ok := m["zlayer_overlayd_status_up"]; !ok || v != 0 {
		t.Fatalf("status_up = %v (present %v), want 0", v, ok)
	}
}

func TestLabelValuesAreEscaped(t *testing.T) {
	r := New(Sources{Status: func(context.Context) (protocol.StatusSnapshot, error) {
		return protocol.StatusSnapshot{Services: []protocol.ServiceStatus{{Service: "we\"ird\\name\n", Subnet: "x"}}}, nil
	}})
	m := scrape(t, r.Handler())
	if _, ok := m[series("zlayer_overlayd_ip_free", nil, "pool", "service:we\"ird\\name\n", "cidr", "x")]; !ok {
		t.Fatalf("escaped series missing; got %v", m)
	}
}

func TestPostIsRefused(t *testing.T) {
	srv := httptest.NewServer(New(Sources{}).Handler())
	defer srv.Close()
	resp, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST got %s", resp.Status)
	}
}

func BenchmarkObserve(b *testing.B) {
	r := New(Sources{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Observe("status", 40*time.Microsecond, false)
		}
	})
}
