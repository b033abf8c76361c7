package metrics

import (
	"context"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// stateCollector reads the daemon once per scrape (one status snapshot,
// the DNS counters, the event and reconcile counters) and turns it into
// constant metrics.
type stateCollector struct {
	src Sources
	now func() time.Time

	statusUp, peers, peersNoHandshake, peerRx, peerTx, peerAge, peerHealthy, peerOmitted,
	ipAllocated, ipFree, attachments, services, reconcileChanges, lastReconcile,
	reconcileRuns, eventsDropped,
	dnsQueries, dnsResponses, dnsDropped, dnsWrongIface, dnsZoneAnswers, dnsForwarded,
	dnsUpstreamErrors, dnsCacheHits, dnsCacheMisses, dnsZoneNames *prometheus.Desc
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
}

func newStateCollector(src Sources, now func() time.Time) *stateCollector {
	peer := []string{"scope", "public_key"}
	return &stateCollector{
		src: src, now: now,
		statusUp:          desc("status_up", "1 when the status snapshot behind the state metrics could be read."),
		peers:             desc("peers", "WireGuard peers configured, by device scope.", "scope"),
		peersNoHandshake:  desc("peers_without_handshake", "Peers that have not completed a handshake, by device scope.", "scope"),
		peerRx:            desc("peer_receive_bytes_total", "Bytes received from the peer, as WireGuard counts them (reset when the device is recreated). Only the first peers up to the peer limit, by scope and key.", peer...),
		peerTx:            desc("peer_transmit_bytes_total", "Bytes sent to the peer, as WireGuard counts them (reset when the device is recreated). Only the first peers up to the peer limit.", peer...),
		peerAge:           desc("peer_last_handshake_age_seconds", "Seconds since the peer's last handshake; peers that never completed one are absent. Only the first peers up to the peer limit.", peer...),
		peerHealthy:       desc("peer_healthy", "1 when the health monitor saw a recent handshake, 0 when not; absent before its first verdict. Only the first peers up to the peer limit.", peer...),
		peerOmitted:       desc("peer_series_omitted", "Peers beyond the peer limit, which have no per-peer series."),
		ipAllocated:       desc("ip_allocated", "Addresses handed out, by pool (the node slice or a service subnet).", "pool", "cidr"),
		ipFree:            desc("ip_free", "Addresses still free, by pool.", "pool", "cidr"),
		attachments:       desc("attachments", "Containers and guests attached to an overlay."),
		services:          desc("services", "Service overlays on this node."),
		reconcileChanges:  desc("reconcile_changes_total", "Kernel objects reconcile had to repair or remove."),
		lastReconcile:     desc("last_reconcile_timestamp_seconds", "Unix time of the last reconcile pass."),
		reconcileRuns:     desc("reconcile_runs_total", "Reconcile passes (at start and on the timer)."),
		eventsDropped:     desc("events_dropped_total", "Events discarded because a client did not read them."),
		dnsQueries:        desc("dns_queries_total", "DNS queries received."),
		dnsResponses:      desc("dns_responses_total", "DNS answers sent, by response code.", "rcode"),
		dnsDropped:        desc("dns_dropped_total", "DNS queries not answered (not a query, or unparsable)."),
		dnsWrongIface:     desc("dns_wrong_interface_total", "DNS queries and TCP connections refused because they arrived on an interface that is not loopback, a bridge, an overlay device or a container link."),
		dnsZoneAnswers:    desc("dns_zone_answers_total", "DNS answers from the cluster zone."),
		dnsForwarded:      desc("dns_forwarded_total", "Upstream resolutions started (after cache and coalescing)."),
		dnsUpstreamErrors: desc("dns_upstream_errors_total", "Upstream attempts that failed."),
		dnsCacheHits:      desc("dns_cache_hits_total", "Forwarded names answered from the cache."),
		dnsCacheMisses:    desc("dns_cache_misses_total", "Forwarded names not in the cache."),
		dnsZoneNames:      desc("dns_zone_names", "Names in the cluster zone."),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.statusUp, c.peers, c.peersNoHandshake, c.peerRx, c.peerTx, c.peerAge, c.peerHealthy, c.peerOmitted,
		c.ipAllocated, c.ipFree, c.attachments, c.services, c.reconcileChanges, c.lastReconcile,
		c.reconcileRuns, c.eventsDropped,
		c.dnsQueries, c.dnsResponses, c.dnsDropped, c.dnsWrongIface, c.dnsZoneAnswers, c.dnsForwarded,
		c.dnsUpstreamErrors, c.dnsCacheHits, c.dnsCacheMisses, c.dnsZoneNames,
	} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	if c.src.Status != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := c.src.Status(ctx)
		cancel()
		if err != nil {
			emit(c.statusUp, prometheus.GaugeValue, 0)
		} else {
			emit(c.statusUp, prometheus.GaugeValue, 1)
			c.collectState(s, emit)
		}
	}
	if c.src.ReconcileRuns != nil {
		emit(c.reconcileRuns, prometheus.CounterValue, float64(c.src.ReconcileRuns()))
	}
	if c.src.EventsDropped != nil {
		emit(c.eventsDropped, prometheus.CounterValue, float64(c.src.EventsDropped()))
	}
	if c.src.DNS != nil {
		st := c.src.DNS()
		emit(c.dnsQueries, prometheus.CounterValue, float64(st.Queries))
		for code, n := range st.Responses {
			emit(c.dnsResponses, prometheus.CounterValue, float64(n), code)
		}
		emit(c.dnsDropped, prometheus.CounterValue, float64(st.Dropped))
		emit(c.dnsWrongIface, prometheus.CounterValue, float64(st.WrongInterface))
		emit(c.dnsZoneAnswers, prometheus.CounterValue, float64(st.ZoneAnswers))
		emit(c.dnsForwarded, prometheus.CounterValue, float64(st.Forwarded))
		emit(c.dnsUpstreamErrors, prometheus.CounterValue, float64(st.UpstreamErrors))
		emit(c.dnsCacheHits, prometheus.CounterValue, float64(st.CacheHits))
		emit(c.dnsCacheMisses, prometheus.CounterValue, float64(st.CacheMisses))
		emit(c.dnsZoneNames, prometheus.GaugeValue, float64(st.Names))
	}
}

type scopedPeer struct {
	scope string
	p     protocol.PeerStatus
}

func (c *stateCollector) collectState(s protocol.StatusSnapshot, emit func(*prometheus.Desc, prometheus.ValueType, float64, ...string)) {
	now := c.now()
	type peerSet struct {
		scope string
		peers []protocol.PeerStatus
	}
	sets := []peerSet{{"global", s.Peers}}
	for _, sp := range s.ServicePeers {
		sets = append(sets, peerSet{"service:" + sp.Service, sp.Peers})
	}
	var all []scopedPeer
	for _, ps := range sets {
		without := 0
		for _, p := range ps.peers {
			if p.LastHandshakeUnixSecs == 0 {
				without++
			}
			all = append(all, scopedPeer{ps.scope, p})
		}
		emit(c.peers, prometheus.GaugeValue, float64(len(ps.peers)), ps.scope)
		emit(c.peersNoHandshake, prometheus.GaugeValue, float64(without), ps.scope)
	}
	limit := c.src.PeerLimit
	if limit == 0 {
		limit = DefaultPeerLimit
	}
	limit = max(limit, 0)
	if len(all) > limit {
		// The same peers keep their series from scrape to scrape.
		sort.Slice(all, func(i, j int) bool {
			if all[i].scope != all[j].scope {
				return all[i].scope < all[j].scope
			}
			return all[i].p.PublicKey < all[j].p.PublicKey
		})
	}
	shown := all[:min(limit, len(all))]
	emit(c.peerOmitted, prometheus.GaugeValue, float64(len(all)-len(shown)))
	for _, sp := range shown {
		p := sp.p
		emit(c.peerRx, prometheus.CounterValue, float64(p.RxBytes), sp.scope, p.PublicKey)
		emit(c.peerTx, prometheus.CounterValue, float64(p.TxBytes), sp.scope, p.PublicKey)
		if p.LastHandshakeUnixSecs != 0 {
			emit(c.peerAge, prometheus.GaugeValue, float64(max(now.Unix()-p.LastHandshakeUnixSecs, 0)), sp.scope, p.PublicKey)
		}
		if p.Healthy != nil {
			v := 0.0
			if *p.Healthy {
				v = 1
			}
			emit(c.peerHealthy, prometheus.GaugeValue, v, sp.scope, p.PublicKey)
		}
	}

	if s.SlicePool != nil {
		emit(c.ipAllocated, prometheus.GaugeValue, float64(s.SlicePool.Used), "slice", s.SlicePool.CIDR)
		emit(c.ipFree, prometheus.GaugeValue, float64(s.SlicePool.Free), "slice", s.SlicePool.CIDR)
	}
	for _, svc := range s.Services {
		emit(c.ipAllocated, prometheus.GaugeValue, float64(svc.Used), "service:"+svc.Service, svc.Subnet)
		emit(c.ipFree, prometheus.GaugeValue, float64(svc.Free), "service:"+svc.Service, svc.Subnet)
	}
	emit(c.attachments, prometheus.GaugeValue, float64(len(s.Attachments)+len(s.Guests)))
	emit(c.services, prometheus.GaugeValue, float64(s.ServiceCount))
	emit(c.reconcileChanges, prometheus.CounterValue, float64(s.ReconcileChanges))
	if s.LastReconcile > 0 {
		emit(c.lastReconcile, prometheus.GaugeValue, float64(s.LastReconcile))
	}
}
