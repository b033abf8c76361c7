package metrics

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// scrape fetches the handler over real HTTP and parses the exposition,
// failing on anything a Prometheus server would reject: a sample before
// its family's TYPE, a family declared twice, a malformed line.
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != ContentType {
		t.Fatalf("content type %q", ct)
	}
	return parse(t, resp.Body)
}

func parse(t *testing.T, r io.Reader) map[string]float64 {
	t.Helper()
	types := map[string]string{}
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			f := strings.Fields(rest)
			if len(f) != 2 {
				t.Fatalf("bad TYPE line %q", line)
			}
			if _, dup := types[f[0]]; dup {
				t.Fatalf("family %s declared twice", f[0])
			}
			types[f[0]] = f[1]
			continue
		}
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			t.Fatalf("bad sample line %q", line)
		}
		series, val := line[:sp], line[sp+1:]
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("bad value in %q", line)
		}
		name, _, _ := strings.Cut(series, "{")
		family := name
		if types[family] == "" {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suf); ok && types[b] == "histogram" {
					family = b
				}
			}
		}
		if types[family] == "" {
			t.Fatalf("sample %q before its family's TYPE", line)
		}
		if _, dup := out[series]; dup {
			t.Fatalf("series %s twice", series)
		}
		out[series] = v
	}
	return out
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
	r.Observe("attach_container", 3*time.Millisecond, false)
	r.Observe("attach_container", 2*time.Second, true)

	m := scrape(t, r.Handler())
	want := map[string]float64{
		`zlayer_overlayd_requests_total{op="status"}`:                                        3,
		`zlayer_overlayd_request_errors_total{op="status"}`:                                  0,
		`zlayer_overlayd_requests_total{op="allocate_ip"}`:                                   1,
		`zlayer_overlayd_request_errors_total{op="allocate_ip"}`:                             1,
		`zlayer_overlayd_requests_total{op="attach_container"}`:                              2,
		`zlayer_overlayd_request_errors_total{op="attach_container"}`:                        1,
		`zlayer_overlayd_request_duration_seconds_bucket{op="attach_container",le="0.0025"}`: 0,
		`zlayer_overlayd_request_duration_seconds_bucket{op="attach_container",le="0.005"}`:  1,
		`zlayer_overlayd_request_duration_seconds_bucket{op="attach_container",le="1"}`:      1,
		`zlayer_overlayd_request_duration_seconds_bucket{op="attach_container",le="2.5"}`:    2,
		`zlayer_overlayd_request_duration_seconds_bucket{op="attach_container",le="+Inf"}`:   2,
		`zlayer_overlayd_request_duration_seconds_count{op="attach_container"}`:              2,
		`zlayer_overlayd_request_duration_seconds_count{op="status"}`:                        3,
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok {
			t.Errorf("missing %s", k)
		} else if got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if s := m[`zlayer_overlayd_request_duration_seconds_sum{op="attach_container"}`]; s < 2.003 || s > 2.0031 {
		t.Errorf("attach latency sum %v, want 2.003", s)
	}
}

func TestScrapeState(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	snap := protocol.StatusSnapshot{
		Peers: []protocol.PeerStatus{
			{PublicKey: "a+b/c=", LastHandshakeUnixSecs: now.Unix() - 42},
			{PublicKey: "never"},
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
	want := map[string]float64{
		`zlayer_overlayd_status_up`:                                                           1,
		`zlayer_overlayd_peers{scope="global"}`:                                               2,
		`zlayer_overlayd_peers{scope="service:db"}`:                                           1,
		`zlayer_overlayd_peer_last_handshake_age_seconds{scope="global",public_key="a+b/c="}`: 42,
		`zlayer_overlayd_peer_last_handshake_age_seconds{scope="service:db",public_key="k2"}`: 7,
		`zlayer_overlayd_peers_without_handshake{scope="global"}`:                             1,
		`zlayer_overlayd_ip_allocated{pool="slice",cidr="10.200.3.0/28"}`:                     3,
		`zlayer_overlayd_ip_free{pool="service:web",cidr="10.200.3.16/28"}`:                   8,
		`zlayer_overlayd_attachments`:                                                         4,
		`zlayer_overlayd_reconcile_runs_total`:                                                5,
		`zlayer_overlayd_reconcile_changes_total`:                                             9,
		`zlayer_overlayd_events_dropped_total`:                                                17,
		`zlayer_overlayd_dns_queries_total`:                                                   100,
		`zlayer_overlayd_dns_responses_total{rcode="NXDOMAIN"}`:                               10,
		`zlayer_overlayd_dns_responses_total{rcode="NOERROR"}`:                                90,
		`zlayer_overlayd_dns_zone_names`:                                                      12,
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok {
			t.Errorf("missing %s", k)
		} else if got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if _, ok := m[`zlayer_overlayd_peer_last_handshake_age_seconds{scope="global",public_key="never"}`]; ok {
		t.Error("a peer without a handshake has an age")
	}
}

func TestStatusFailureIsVisible(t *testing.T) {
	r := New(Sources{Status: func(context.Context) (protocol.StatusSnapshot, error) {
		return protocol.StatusSnapshot{}, errors.New("shutting down")
	}})
	m := scrape(t, r.Handler())
	if m["zlayer_overlayd_status_up"] != 0 {
		t.Fatalf("status_up = %v, want 0", m["zlayer_overlayd_status_up"])
	}
}

func TestLabelValuesAreEscaped(t *testing.T) {
	r := New(Sources{Status: func(context.Context) (protocol.StatusSnapshot, error) {
		return protocol.StatusSnapshot{Services: []protocol.ServiceStatus{{Service: "we\"ird\\name\n", Subnet: "x"}}}, nil
	}})
	m := scrape(t, r.Handler())
	if _, ok := m[`zlayer_overlayd_ip_free{pool="service:we\"ird\\name\n",cidr="x"}`]; !ok {
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
