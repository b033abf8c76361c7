package dns

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

const (
	// DefaultTTL is the TTL of our records, and the negative-caching TTL
	// (SOA minimum). It is short because containers come and go.
	DefaultTTL = 5
	// DefaultForwardTimeout bounds the wait for one upstream.
	DefaultForwardTimeout = 2 * time.Second
	// DefaultCacheSize is the number of upstream answers kept.
	DefaultCacheSize = 10000
	// DefaultPort is the loopback port of our resolver (--dns-port): one
	// above MainDaemonPort, which the ZLayer main daemon's own DNS server
	// binds on the same node.
	DefaultPort = 15354
	// MainDaemonPort is the ZLayer main daemon's DNS port (its dns_port
	// default): on 127.0.0.1 and the node IP, it is the main daemon's.
	MainDaemonPort = 15353
)

// Config configures a Server. The zero value of every field but Zone has a
// sensible default.
type Config struct {
	// Zone is the cluster zone we are authoritative for, e.g. "prod.local".
	Zone string
	// TTL of our records and of negative answers; 0 means DefaultTTL.
	TTL uint32
	// Upstreams receive the queries for names outside our zones, tried in
	// turn. See UpstreamsFromResolvConf.
	Upstreams []netip.AddrPort
	// ForwardTimeout is the wait for one upstream; 0 means DefaultForwardTimeout.
	ForwardTimeout time.Duration
	// CacheSize bounds the cache of upstream answers: 0 means
	// DefaultCacheSize, a negative value disables the cache.
	CacheSize int
	// Interfaces are the interfaces whose queries are answered at all,
	// besides loopback (see Interfaces; SetInterfaces changes them). The
	// zero value answers loopback only. Linux checks the interface each
	// query arrived on; other platforms cannot tell and answer every
	// listener's queries.
	Interfaces Interfaces
	// AllowRecursion decides which of the clients answered may have names
	// outside our zones resolved for them; others get REFUSED (we are not
	// an open resolver). Names in our zones are answered for every client
	// Interfaces admits. nil allows loopback only.
	AllowRecursion func(src netip.Addr) bool
	// ReversePrefixes are the address ranges whose reverse zones are ours:
	// unknown names there get NXDOMAIN instead of being forwarded. PTRs of
	// the addresses we hold are answered whatever this says.
	ReversePrefixes []netip.Prefix
	// Logger receives operational messages; nil means slog.Default().
	Logger *slog.Logger
}

// Server is the embedded DNS server: authoritative for the cluster zone and
// the reverse zones of its addresses, forwarding for everything else.
type Server struct {
	log            *slog.Logger
	allowRecursion func(netip.Addr) bool
	forwardTimeout time.Duration
	now            func() time.Time // replaced by tests to age the cache

	// Zone data: readers load snap; writers hold mu.
	snap atomic.Pointer[snapshot]
	mu   sync.Mutex
	zone *zoneState

	// Forwarding.
	upstreams atomic.Pointer[[]netip.AddrPort]
	preferred atomic.Uint32
	cache     *cache
	fmu       sync.Mutex
	flights   map[string]*flight
	waiting   int // queries waiting for another's flight; guarded by fmu
	waitCap   int // tests lower maxWaiting with it
	inflight  chan struct{}
	ctx       context.Context
	cancel    context.CancelFunc

	// ifaces is the policy of Interfaces, swapped whole.
	ifaces atomic.Pointer[ifacePolicy]

	// Listeners, guarded by lmu (held across binds: SetListeners calls
	// are serialised, queries are not affected).
	lmu       sync.Mutex
	listeners []*listener
	closed    bool

	stats counters
}

// New validates cfg and returns a Server with no listeners; call
// SetListeners to serve on the network.
func New(cfg Config) (*Server, error) {
	origin, err := canonicalZone(cfg.Zone)
	if err != nil {
		return nil, err
	}
	reverse, err := reverseZones(cfg.ReversePrefixes)
	if err != nil {
		return nil, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.AllowRecursion == nil {
		cfg.AllowRecursion = netip.Addr.IsLoopback
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ifaces, err := newIfacePolicy(cfg.Interfaces)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log:            cfg.Logger,
		allowRecursion: cfg.AllowRecursion,
		forwardTimeout: cfg.ForwardTimeout,
		now:            time.Now,
		flights:        map[string]*flight{},
		inflight:       make(chan struct{}, maxInflight),
	}
	switch {
	case cfg.CacheSize == 0:
		s.cache = newCache(DefaultCacheSize)
	case cfg.CacheSize > 0:
		s.cache = newCache(cfg.CacheSize)
	}
	s.ifaces.Store(ifaces)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.SetUpstreams(cfg.Upstreams)
	// A time-based first serial keeps serials increasing across restarts.
	s.zone = newZoneState(origin, cfg.TTL, uint32(time.Now().Unix()), reverse)
	s.snap.Store(s.zone.cur)
	return s, nil
}

// Zone returns the cluster zone as a lower-case FQDN ("prod.local.").
func (s *Server) Zone() string { return s.snap.Load().origin }

// SetZone moves every record to a new zone; names are kept relative, so
// "web" in prod.local becomes "web" in the new zone.
func (s *Server) SetZone(zone string) error {
	origin, err := canonicalZone(zone)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if origin == s.zone.origin {
		return nil
	}
	for rel := range s.zone.names {
		if err := checkFits(rel, origin); err != nil {
			return fmt.Errorf("dns: cannot move to zone %q: name %w", zone, err)
		}
	}
	s.zone.origin = origin
	s.snap.Store(s.zone.rebuildAll())
	return nil
}

// SetTTL changes the TTL of every record and of negative answers (0 means
// DefaultTTL).
func (s *Server) SetTTL(ttl uint32) {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ttl == s.zone.ttl {
		return
	}
	s.zone.ttl = ttl
	s.snap.Store(s.zone.rebuildAll())
}

// SetReversePrefixes replaces the address ranges whose reverse zones are
// ours (see Config.ReversePrefixes).
func (s *Server) SetReversePrefixes(prefixes []netip.Prefix) error {
	reverse, err := reverseZones(prefixes)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zone.setReverse(reverse)
	s.snap.Store(s.zone.rebuildAll())
	return nil
}

// CanonicalName returns the lower-case FQDN a name maps to in the current
// zone, validating it like Register does.
func (s *Server) CanonicalName(name string) (string, error) {
	rel, zone, err := s.RelativeName(name)
	if err != nil {
		return "", err
	}
	return rel + "." + zone, nil
}

// RelativeName validates a name like Register does and returns it relative
// to the current zone (lower-case, the form Records returns), together with
// that zone as a lower-case FQDN. Both come from one reading of the zone:
// deriving the relative name from CanonicalName and Zone called one after
// the other is wrong across a SetZone, which can land between them. One
// load of the snapshot is that single reading, so writers holding mu never
// delay it.
func (s *Server) RelativeName(name string) (rel, zone string, err error) {
	origin := s.Zone()
	rel, err = relativeName(name, origin)
	if err != nil {
		return "", "", err
	}
	return rel, origin, nil
}

// cleanAddr validates an address for a record.
func cleanAddr(name string, addr netip.Addr) (netip.Addr, error) {
	if !addr.IsValid() {
		return addr, fmt.Errorf("dns: address for name %q is not set", name)
	}
	addr = addr.Unmap().WithZone("")
	if addr.IsUnspecified() {
		return addr, fmt.Errorf("dns: address %v for name %q is unspecified; give the container's address", addr, name)
	}
	return addr, nil
}

// Register adds an address to a name. Registering the same pair again
// changes nothing.
func (s *Server) Register(name string, addr netip.Addr) error {
	addr, err := cleanAddr(name, addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rel, err := relativeName(name, s.zone.origin)
	if err != nil {
		return err
	}
	old := s.zone.names[rel]
	if slices.Contains(old, addr) {
		return nil
	}
	s.update(rel, append(slices.Clip(old), addr))
	return nil
}

// Set replaces all addresses of a name at once (none removes the name), so
// moving a name to a new address never shows both, nor neither.
func (s *Server) Set(name string, addrs ...netip.Addr) error {
	clean := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		a, err := cleanAddr(name, a)
		if err != nil {
			return err
		}
		if !slices.Contains(clean, a) {
			clean = append(clean, a)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rel, err := relativeName(name, s.zone.origin)
	if err != nil {
		return err
	}
	if slices.Equal(s.zone.names[rel], clean) {
		return nil
	}
	s.update(rel, clean)
	return nil
}

// Unregister removes a name and all its addresses; a name we do not hold
// is not an error.
func (s *Server) Unregister(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rel, err := relativeName(name, s.zone.origin)
	if err != nil {
		return err
	}
	if _, ok := s.zone.names[rel]; !ok {
		return nil
	}
	s.update(rel, nil)
	return nil
}

// update changes one name and publishes; s.mu must be held.
func (s *Server) update(rel string, addrs []netip.Addr) {
	dirty := map[string]struct{}{}
	s.zone.setName(rel, addrs, dirty)
	s.snap.Store(s.zone.publish(dirty))
}

// Replace swaps the whole record set (used to load the stored state at
// start). Nothing changes if any name or address is invalid.
func (s *Server) Replace(records map[string][]netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make(map[string][]netip.Addr, len(records))
	for name, addrs := range records {
		rel, err := relativeName(name, s.zone.origin)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			a, err := cleanAddr(name, a)
			if err != nil {
				return err
			}
			if !slices.Contains(names[rel], a) {
				names[rel] = append(names[rel], a)
			}
		}
	}
	s.zone.names = map[string][]netip.Addr{}
	s.zone.owners = map[netip.Addr][]string{}
	for rel, addrs := range names {
		if len(addrs) == 0 {
			continue
		}
		s.zone.names[rel] = addrs
		for _, a := range addrs {
			s.zone.owners[a] = append(s.zone.owners[a], rel)
		}
	}
	for _, owners := range s.zone.owners {
		slices.Sort(owners)
	}
	s.snap.Store(s.zone.rebuildAll())
	return nil
}

// Records returns every name (relative, lower-case) and its addresses.
func (s *Server) Records() map[string][]netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]netip.Addr, len(s.zone.names))
	for rel, addrs := range s.zone.names {
		out[rel] = slices.Clone(addrs)
	}
	return out
}

// SetUpstreams replaces the resolvers that names outside our zones are
// forwarded to, and forgets answers cached from the old ones.
func (s *Server) SetUpstreams(up []netip.AddrPort) {
	clean := make([]netip.AddrPort, 0, len(up))
	for _, u := range up {
		u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
		if u.IsValid() && !slices.Contains(clean, u) {
			clean = append(clean, u)
		}
	}
	if old := s.upstreams.Load(); old != nil && slices.Equal(*old, clean) {
		return
	}
	s.upstreams.Store(&clean)
	s.preferred.Store(0)
	if s.cache != nil {
		s.cache.flush()
	}
}

// Upstreams returns the resolvers in use.
func (s *Server) Upstreams() []netip.AddrPort { return slices.Clone(*s.upstreams.Load()) }

// Close stops every listener and abandons forwards in flight.
func (s *Server) Close() error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.cancel()
	for _, l := range s.listeners {
		l.stop(drainTimeout)
	}
	// With forwards cancelled every handler returns promptly; wait for
	// them so nothing of ours runs after Close.
	for _, l := range s.listeners {
		l.done.Wait()
	}
	s.listeners = nil
	return nil
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Queries        uint64            // queries handled
	Responses      map[string]uint64 // answers sent, by rcode name ("NOERROR", "NXDOMAIN", …)
	Dropped        uint64            // queries not answered (responses, unpackable replies)
	WrongInterface uint64            // queries and TCP connections refused for their arrival interface
	ZoneAnswers    uint64            // answers from our zones
	Forwarded      uint64            // upstream resolutions started (after cache and coalescing)
	UpstreamErrors uint64            // upstream attempts that failed (timeout, SERVFAIL, …)
	Coalesced      uint64            // queries that joined an identical resolution in flight
	CacheHits      uint64
	CacheMisses    uint64
	CacheEntries   int
	Names          int    // names in the zone
	Addresses      int    // name/address pairs in the zone
	Serial         uint32 // current SOA serial
}

type counters struct {
	queries, dropped, zoneAnswers, forwarded, upstreamErrors atomic.Uint64
	wrongInterface                                           atomic.Uint64
	coalesced, cacheHits, cacheMisses                        atomic.Uint64
	rcodes                                                   [24]atomic.Uint64
}

func (c *counters) rcode(rc int) {
	if rc >= 0 && rc < len(c.rcodes) {
		c.rcodes[rc].Add(1)
	}
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	snap := s.snap.Load()
	st := Stats{
		Queries:        s.stats.queries.Load(),
		Responses:      map[string]uint64{},
		Dropped:        s.stats.dropped.Load(),
		WrongInterface: s.stats.wrongInterface.Load(),
		ZoneAnswers:    s.stats.zoneAnswers.Load(),
		Forwarded:      s.stats.forwarded.Load(),
		UpstreamErrors: s.stats.upstreamErrors.Load(),
		Coalesced:      s.stats.coalesced.Load(),
		CacheHits:      s.stats.cacheHits.Load(),
		CacheMisses:    s.stats.cacheMisses.Load(),
		Names:          snap.names,
		Addresses:      snap.addrs,
		Serial:         snap.serial,
	}
	if s.cache != nil {
		st.CacheEntries = s.cache.len()
	}
	for rc := range s.stats.rcodes {
		if n := s.stats.rcodes[rc].Load(); n > 0 {
			name, ok := dns.RcodeToString[rc]
			if !ok {
				name = fmt.Sprintf("RCODE%d", rc)
			}
			st.Responses[name] = n
		}
	}
	return st
}
