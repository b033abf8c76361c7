package engine

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The desired state: the bottom layer. Memory only, no I/O, guarded by
// Engine.mu.

// Pools and owners as recorded in the store.
const (
	poolSlice   = "slice"
	poolSlice2  = "slice2" // the node slice of the second family
	ownerNode   = "node"
	ownerGW     = "gateway"
	ownerAPI    = "api"
	attachOwner = "attach:"
	guestOwner  = "guest:"
)

func servicePool(name string) string { return "service:" + name }

// state is the engine's in-memory copy of the desired state: the store's
// records plus what is derived from them (parsed prefixes, address pools,
// open devices).
type state struct {
	node store.Node
	key  wgtypes.Key // node key; zero until generated
	// slice is the node's slice assignment (kept across teardowns);
	// slicePool hands out its addresses.
	cluster   netip.Prefix
	slice     netip.Prefix
	slicePool *ipam.Pool
	// fam2 is the second address family of a dual-stack cluster (nil with
	// one family): its cluster prefix, node slice and slice pool. The
	// fields above are the first family's, the one reference clients see.
	fam2 *family

	global   *globalState
	services map[string]*serviceState
	attach   map[string]*store.Attachment
	peers    map[string]*store.Peer // peerKey(scope, pubkey); change only through putPeer and dropPeer
	// holders indexes peers by the prefixes they hold: scope|prefix ->
	// public key, so finding who holds a prefix a request claims costs the
	// same with 10 peers as with 10,000.
	holders map[string]string
	dns     map[string]store.DNSRecord
	// owners holds every allocation's owner, by pool|addr.
	owners map[string]string

	// pending are the subnets and dedicated ports of services being set up
	// (or grown) right now, not yet committed: placements of other setups
	// avoid them.
	pendingSubnets map[string][]netip.Prefix // service -> its subnets
	pendingPorts   map[uint16]string         // port -> service
	// returning are the carved ranges of torn-down services whose
	// containers' links are still being deleted: they stay out of the slice
	// pool until then, and no other setup may take them meanwhile (the
	// return would give them back from under it).
	returning map[netip.Prefix]string // range -> service that gave it up
	// pendingLinks are the host link names netns attaches picked and are
	// building, not yet committed (name -> attachment key): attaches of
	// other handles, which share no lock with them, must not pick them
	// too, and reconcile must not delete what is being built under them.
	pendingLinks map[string]string
}

// clusterContains reports whether p lies in one of the cluster's prefixes
// as the global record has them.
func (g *globalState) clusterContains(p netip.Prefix) bool {
	c1, c2, _ := parseCIDRPair("cluster_cidr", g.rec.ClusterCIDR)
	return (c1.IsValid() && c1.Contains(p.Addr())) || (c2.IsValid() && c2.Contains(p.Addr()))
}

// family is the second address family of a dual-stack cluster.
type family struct {
	cluster, slice netip.Prefix
	pool           *ipam.Pool
}

// globalState is the live global overlay.
type globalState struct {
	rec     store.Global
	nodeIP  netip.Addr
	nodeIP2 netip.Addr // the second family's (dual-stack only)
	dev     *device    // nil when the kernel side is not (yet) up
}

// serviceState is one service overlay. Its first range (subnet, gateway,
// pool) is what the main daemon is told; extra ranges are added when it
// fills up, carved from the node slice.
type serviceState struct {
	rec     store.Service
	subnet  netip.Prefix
	gateway netip.Addr
	pool    *ipam.Pool
	extra   []svcRange
	second  *svcRange   // the second family's range (dual-stack only)
	key     wgtypes.Key // dedicated only
	dev     *device     // dedicated only; nil until up
}

// svcRange is one address range of a service, with its gateway on the
// service's bridge.
type svcRange struct {
	subnet  netip.Prefix
	gateway netip.Addr
	pool    *ipam.Pool
}

func (s *serviceState) dedicated() bool { return s.rec.Mode == "dedicated" }

// ranges are all the service's ranges, the first one first.
func (s *serviceState) ranges() []svcRange {
	return append([]svcRange{{s.subnet, s.gateway, s.pool}}, s.extra...)
}

func (s *serviceState) subnets() []netip.Prefix {
	out := []netip.Prefix{s.subnet}
	for _, r := range s.extra {
		out = append(out, r.subnet)
	}
	return out
}

// allRanges are the first family's ranges and the second family's.
func (s *serviceState) allRanges() []svcRange {
	if s.second == nil {
		return s.ranges()
	}
	return append(s.ranges(), *s.second)
}

// allSubnets are the subnets of every range of both families.
func (s *serviceState) allSubnets() []netip.Prefix {
	out := s.subnets()
	if s.second != nil {
		out = append(out, s.second.subnet)
	}
	return out
}

// rangeOf is the range holding a, of either family.
func (s *serviceState) rangeOf(a netip.Addr) (svcRange, bool) {
	for _, r := range s.allRanges() {
		if r.subnet.Contains(a) {
			return r, true
		}
	}
	return svcRange{}, false
}

// The address-pool operations of a service span its ranges.

func (s *serviceState) Allocate() (netip.Addr, error) {
	for _, r := range s.ranges() {
		a, err := r.pool.Allocate()
		if !errors.Is(err, ipam.ErrExhausted) {
			return a, err
		}
	}
	return netip.Addr{}, ipam.ErrExhausted
}

func (s *serviceState) AllocateSpecific(a netip.Addr) error {
	r, ok := s.rangeOf(a)
	if !ok {
		return fmt.Errorf("%s is outside the ranges of service %s", a, s.rec.Name)
	}
	return r.pool.AllocateSpecific(a)
}

func (s *serviceState) Reserve(a netip.Addr) error {
	r, ok := s.rangeOf(a)
	if !ok {
		return fmt.Errorf("%s is outside the ranges of service %s", a, s.rec.Name)
	}
	return r.pool.Reserve(a)
}

func (s *serviceState) Release(a netip.Addr) error {
	r, ok := s.rangeOf(a)
	if !ok {
		return fmt.Errorf("%s is outside the ranges of service %s", a, s.rec.Name)
	}
	return r.pool.Release(a)
}

func (s *serviceState) IsAllocated(a netip.Addr) bool {
	r, ok := s.rangeOf(a)
	return ok && r.pool.IsAllocated(a)
}

func (s *serviceState) Used() (n uint64) {
	for _, r := range s.ranges() { // the first family's: the second is vast
		n += r.pool.Used()
	}
	return n
}

func (s *serviceState) Free() (n uint64) {
	for _, r := range s.ranges() {
		n += r.pool.Free()
	}
	return n
}

// addrPool is a pool of addresses as the store names them: the node slice
// (*ipam.Pool) or a service's ranges (*serviceState).
type addrPool interface {
	Allocate() (netip.Addr, error)
	AllocateSpecific(netip.Addr) error
	Reserve(netip.Addr) error
	Release(netip.Addr) error
	IsAllocated(netip.Addr) bool
}

func peerKey(scope, pubkey string) string { return scope + "|" + pubkey }

func allocKey(pool string, a netip.Addr) string { return pool + "|" + a.String() }

// loadState rebuilds the in-memory state from what the store holds. It
// refuses records that contradict each other rather than guessing.
func loadState(st *store.State) (*state, error) {
	s := &state{
		node:           st.Node,
		services:       map[string]*serviceState{},
		attach:         map[string]*store.Attachment{},
		peers:          map[string]*store.Peer{},
		holders:        map[string]string{},
		dns:            map[string]store.DNSRecord{},
		owners:         map[string]string{},
		pendingSubnets: map[string][]netip.Prefix{},
		pendingPorts:   map[uint16]string{},
		returning:      map[netip.Prefix]string{},
		pendingLinks:   map[string]string{},
	}
	if st.Node.PrivateKey != "" {
		k, err := wg.ParseKey(st.Node.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("stored node key: %w", err)
		}
		s.key = k
	}
	if st.Node.ClusterCIDR != "" {
		if err := s.loadSlices(st.Node.ClusterCIDR, st.Node.SliceCIDR); err != nil {
			return nil, err
		}
	}
	if st.Global != nil {
		ip, err := netip.ParseAddr(st.Global.NodeIP)
		if err != nil {
			return nil, fmt.Errorf("stored node IP %q: %w", st.Global.NodeIP, err)
		}
		s.global = &globalState{rec: *st.Global, nodeIP: ip}
		if st.Global.NodeIP2 != "" {
			if s.global.nodeIP2, err = netip.ParseAddr(st.Global.NodeIP2); err != nil {
				return nil, fmt.Errorf("stored node IP %q: %w", st.Global.NodeIP2, err)
			}
		}
	}
	if err := s.loadServices(st.Services); err != nil {
		return nil, err
	}
	if err := s.loadAllocations(st.Allocations); err != nil {
		return nil, err
	}
	if st.Global == nil {
		// A node whose global overlay is torn down keeps its slice and the
		// slice's node IP (see teardownGlobal).
		keepNodeIP(s.slice, s.slicePool)
		if s.fam2 != nil {
			keepNodeIP(s.fam2.slice, s.fam2.pool)
		}
	}
	for k, a := range st.Attachments {
		a := a
		s.attach[k] = &a
	}
	for _, p := range st.Peers {
		s.putPeer(p)
	}
	for k, r := range st.DNS {
		s.dns[k] = r
	}
	return s, nil
}

// loadSlices parses the node's stored cluster prefixes and slices (one or
// two families) and builds their pools.
func (s *state) loadSlices(clusters, slices string) error {
	c1, c2, err := parseCIDRPair("stored cluster CIDR", clusters)
	if err != nil {
		return err
	}
	s1, s2, err := parseCIDRPair("stored node slice", slices)
	if err != nil {
		return err
	}
	s.cluster, s.slice = c1, s1
	if s.slicePool, err = ipam.NewPool(s1); err != nil {
		return err
	}
	if c2.IsValid() != s2.IsValid() {
		return fmt.Errorf("stored cluster %s and slice %s do not have the same families", clusters, slices)
	}
	if c2.IsValid() {
		s.fam2 = &family{cluster: c2, slice: s2}
		if s.fam2.pool, err = ipam.NewPool(s2); err != nil {
			return err
		}
	}
	return nil
}

// keepNodeIP reserves a slice's node IP while the global overlay is down,
// so nothing else takes it.
func keepNodeIP(slice netip.Prefix, pool *ipam.Pool) {
	if ip, ok := ipam.FirstUsable(slice); ok && pool != nil && !pool.IsAllocated(ip) {
		_ = pool.Reserve(ip) // an address carved out for a service stays with it
	}
}

func (s *state) loadServices(recs map[string]store.Service) error {
	names := make([]string, 0, len(recs))
	for name := range recs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		rec := recs[name]
		svc, err := newServiceState(rec)
		if err != nil {
			return fmt.Errorf("stored service %s: %w", name, err)
		}
		// Every range inside the slice was carved out of it, an explicit
		// subnet as much as one the slice gave (setupService excludes
		// both): the slice pool must not hand out their addresses.
		carved := svc.ranges()
		if svc.second != nil {
			carved = append(carved, *svc.second)
		}
		for _, r := range carved {
			pool, slice := s.slicePool, s.slice
			if r.subnet.Addr().Is4() != s.slice.Addr().Is4() && s.fam2 != nil {
				pool, slice = s.fam2.pool, s.fam2.slice
			}
			if pool == nil || !slice.Contains(r.subnet.Addr()) || r.subnet.Bits() < slice.Bits() {
				continue
			}
			if err := pool.Exclude(r.subnet); err != nil {
				return fmt.Errorf("stored service %s: carve %s out of the node slice: %w", name, r.subnet, err)
			}
		}
		s.services[name] = svc
	}
	return nil
}

// loadAllocations restores allocations in address order: the pools are
// fastest that way.
func (s *state) loadAllocations(stored []store.Allocation) error {
	allocs := slices.Clone(stored)
	sort.Slice(allocs, func(i, j int) bool {
		if allocs[i].Pool != allocs[j].Pool {
			return allocs[i].Pool < allocs[j].Pool
		}
		ai, _ := netip.ParseAddr(allocs[i].Addr)
		aj, _ := netip.ParseAddr(allocs[j].Addr)
		return ai.Less(aj)
	})
	for _, a := range allocs {
		addr, err := netip.ParseAddr(a.Addr)
		if err != nil {
			return fmt.Errorf("stored allocation %s|%s: %w", a.Pool, a.Addr, err)
		}
		pool := s.pool(a.Pool)
		if pool == nil {
			// The pool is gone (a service torn down while the daemon
			// died, or a slice that moved); reconcile drops the record.
			s.owners[allocKey(a.Pool, addr)] = a.Owner
			continue
		}
		if slice, ok := pool.(*ipam.Pool); ok && slice.IsExcluded(addr) {
			// Handed out before a service's range covering it was carved
			// back out at start (versions before 2026-12-06 did not for
			// an explicit subnet): its owner keeps it, and the pool never
			// hands out an excluded address a second time.
			s.owners[allocKey(a.Pool, addr)] = a.Owner
			continue
		}
		if a.Owner == ownerGW {
			if err := pool.Reserve(addr); err != nil {
				return fmt.Errorf("stored gateway %s of %s: %w", addr, a.Pool, err)
			}
		} else if err := pool.AllocateSpecific(addr); err != nil {
			return fmt.Errorf("stored allocation %s of %s (owner %s): %w", addr, a.Pool, a.Owner, err)
		}
		s.owners[allocKey(a.Pool, addr)] = a.Owner
	}
	return nil
}

func newServiceState(rec store.Service) (*serviceState, error) {
	subnet, err := ipam.ParsePrefix(rec.Subnet)
	if err != nil {
		return nil, err
	}
	gw, err := netip.ParseAddr(rec.Gateway)
	if err != nil {
		return nil, fmt.Errorf("gateway %q: %w", rec.Gateway, err)
	}
	pool, err := ipam.NewPool(subnet)
	if err != nil {
		return nil, err
	}
	svc := &serviceState{rec: rec, subnet: subnet, gateway: gw, pool: pool}
	for _, c := range rec.Ranges {
		r, err := newRange(c)
		if err != nil {
			return nil, fmt.Errorf("range %q: %w", c, err)
		}
		svc.extra = append(svc.extra, r)
	}
	if rec.Subnet2 != "" {
		r, err := newRange(rec.Subnet2)
		if err != nil {
			return nil, fmt.Errorf("subnet %q: %w", rec.Subnet2, err)
		}
		svc.second = &r
	}
	if rec.PrivateKey != "" {
		if svc.key, err = wg.ParseKey(rec.PrivateKey); err != nil {
			return nil, fmt.Errorf("dedicated key: %w", err)
		}
	}
	return svc, nil
}

// newRange makes a range of a CIDR: its pool, and its first usable address
// as the gateway (not reserved here: the gateway's allocation record, or
// the caller, does that).
func newRange(cidr string) (svcRange, error) {
	p, err := ipam.ParsePrefix(cidr)
	if err != nil {
		return svcRange{}, err
	}
	gw, ok := ipam.FirstUsable(p)
	if !ok {
		return svcRange{}, fmt.Errorf("%s has no usable address", p)
	}
	pool, err := ipam.NewPool(p)
	if err != nil {
		return svcRange{}, err
	}
	return svcRange{subnet: p, gateway: gw, pool: pool}, nil
}

// pool returns the address pool named as in the store, or nil.
func (s *state) pool(name string) addrPool {
	switch name {
	case poolSlice:
		if s.slicePool == nil {
			return nil
		}
		return s.slicePool
	case poolSlice2:
		if s.fam2 == nil {
			return nil
		}
		return s.fam2.pool
	}
	if svc, ok := strings.CutPrefix(name, "service:"); ok {
		if sv := s.services[svc]; sv != nil {
			return sv
		}
	}
	return nil
}

// poolFor finds the pool an address belongs to: a service's ranges first
// (they may be carved out of the slice), then the slice.
func (s *state) poolFor(a netip.Addr) (string, addrPool) {
	for name, svc := range s.services {
		if _, ok := svc.rangeOf(a); ok {
			return servicePool(name), svc
		}
	}
	if s.slicePool != nil && s.slice.Contains(a) {
		return poolSlice, s.slicePool
	}
	if s.fam2 != nil && s.fam2.slice.Contains(a) {
		return poolSlice2, s.fam2.pool
	}
	return "", nil
}

// allocationOf is the pool an address belongs to and its owner there ("":
// none). An address of a service range inside the node slice belongs to the
// service, unless the slice handed it out before the range was carved out
// (a store an older version wrote, see loadAllocations): that allocation
// stays the slice's until it is released.
func (s *state) allocationOf(a netip.Addr) (poolName string, pool addrPool, owner string) {
	poolName, pool = s.poolFor(a)
	owner = s.owners[allocKey(poolName, a)]
	if owner != "" || !strings.HasPrefix(poolName, "service:") {
		return poolName, pool, owner
	}
	if name, slice := s.slicePoolOf(a); slice != nil && slice.IsExcluded(a) {
		if kept := s.owners[allocKey(name, a)]; kept != "" {
			return name, slice, kept
		}
	}
	return poolName, pool, owner
}

// slicePoolOf is the name and pool of the node slice of a's family.
func (s *state) slicePoolOf(a netip.Addr) (string, *ipam.Pool) {
	if s.fam2 != nil && a.Is4() == s.fam2.slice.Addr().Is4() {
		return poolSlice2, s.fam2.pool
	}
	return poolSlice, s.slicePool
}

// clusters are the cluster prefixes of every family, the first first.
func (s *state) clusters() []netip.Prefix {
	out := []netip.Prefix{s.cluster}
	if s.fam2 != nil {
		out = append(out, s.fam2.cluster)
	}
	return out
}

// slices are the node slices of every family, the first first.
func (s *state) slices() []netip.Prefix {
	out := []netip.Prefix{s.slice}
	if s.fam2 != nil {
		out = append(out, s.fam2.slice)
	}
	return out
}

// takenPrefixes lists every prefix this node already uses or knows to be
// used by others, so new placements avoid them: our service ranges
// (committed, being set up and being given back), our slice, and every
// peer's allowed IPs (other nodes' slices and subnets).
func (s *state) takenPrefixes() []netip.Prefix {
	var out []netip.Prefix
	if s.slice.IsValid() {
		out = append(out, s.slice)
	}
	if s.fam2 != nil {
		out = append(out, s.fam2.slice)
	}
	for _, svc := range s.services {
		out = append(out, svc.allSubnets()...)
	}
	for _, ps := range s.pendingSubnets {
		out = append(out, ps...)
	}
	for p := range s.returning {
		out = append(out, p)
	}
	for _, p := range s.peers {
		for _, c := range p.AllowedIPs {
			if pf, err := netip.ParsePrefix(c); err == nil && pf.Bits() > 0 {
				out = append(out, pf.Masked())
			}
		}
	}
	return out
}

// putPeer records a peer (a copy) in the state and the prefix index.
func (s *state) putPeer(p store.Peer) {
	key := peerKey(p.Scope, p.PublicKey)
	if old := s.peers[key]; old != nil {
		s.unindex(old)
	}
	p.AllowedIPs = slices.Clone(p.AllowedIPs)
	s.peers[key] = &p
	for _, c := range p.AllowedIPs {
		s.holders[peerKey(p.Scope, c)] = p.PublicKey
	}
}

// dropPeer removes a peer from the state and the prefix index.
func (s *state) dropPeer(scope, pub string) {
	key := peerKey(scope, pub)
	if old := s.peers[key]; old != nil {
		s.unindex(old)
		delete(s.peers, key)
	}
}

func (s *state) unindex(p *store.Peer) {
	for _, c := range p.AllowedIPs {
		if k := peerKey(p.Scope, c); s.holders[k] == p.PublicKey {
			delete(s.holders, k)
		}
	}
}

// holdersOf returns the other peers of scope holding one of claims,
// sorted, without duplicates.
func (s *state) holdersOf(scope, pub string, claims []string) []string {
	var out []string
	for _, c := range claims {
		if h := s.holders[peerKey(scope, c)]; h != "" && h != pub {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// peersOf returns the stored peers of a scope, sorted by key.
func (s *state) peersOf(scope string) []store.Peer {
	var out []store.Peer
	for _, p := range s.peers {
		if p.Scope == scope {
			out = append(out, *p)
		}
	}
	slices.SortFunc(out, func(a, b store.Peer) int { return strings.Compare(a.PublicKey, b.PublicKey) })
	return out
}

// peerRoutes are the destinations that must be routed into a device for its
// peers: every allowed IP not already covered by the device's own
// addresses (for the global device, the cluster CIDR covers most) and not
// a default route (we never take over the host's default route).
func peerRoutes(peers []store.Peer, covered []netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, p := range peers {
		for _, c := range p.AllowedIPs {
			pf, err := netip.ParsePrefix(c)
			if err != nil || pf.Bits() == 0 {
				continue
			}
			pf = pf.Masked()
			if seen[pf] || coveredBy(pf, covered) {
				continue
			}
			seen[pf] = true
			out = append(out, pf)
		}
	}
	return out
}

func coveredBy(p netip.Prefix, by []netip.Prefix) bool {
	for _, c := range by {
		c = c.Masked()
		if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// releaseIfFree returns an address to its pool unless the pool was
// replaced meanwhile (a service torn down and set up again).
func releaseIfFree(p addrPool, a netip.Addr) {
	if p != nil && a.IsValid() && p.IsAllocated(a) {
		p.Release(a)
	}
}

const scopeGlobal = "global"

func scopeService(name string) string { return "service:" + name }

// parseCIDRPair parses one prefix, or two of different families separated
// by a comma (a dual-stack cluster, slice or subnet). An empty s gives two
// invalid prefixes.
func parseCIDRPair(field, s string) (first, second netip.Prefix, err error) {
	if s == "" {
		return first, second, nil
	}
	a, b, two := strings.Cut(s, ",")
	if first, err = parseCIDRField(field, strings.TrimSpace(a)); err != nil {
		return first, second, err
	}
	if !two {
		return first, second, nil
	}
	if strings.Contains(b, ",") {
		return first, second, fmt.Errorf("%s %q lists more than two prefixes; give at most one IPv4 and one IPv6", field, truncate(s))
	}
	if second, err = parseCIDRField(field, strings.TrimSpace(b)); err != nil {
		return first, second, err
	}
	if first.Addr().Is4() == second.Addr().Is4() {
		return first, second, fmt.Errorf("%s %q gives two prefixes of one family; a dual-stack cluster has one IPv4 and one IPv6", field, truncate(s))
	}
	return first, second, nil
}

// joinPrefixes is parseCIDRPair's inverse.
func joinPrefixes(first, second netip.Prefix) string {
	if !second.IsValid() {
		return first.String()
	}
	return first.String() + "," + second.String()
}

// wantedLinks is every link name the desired state has, and the host
// links netns attaches are building: a link of such a name may carry the
// label of another attachment, gone since, when a reconcile pass listed
// it, and that pass must not delete the new one.
func (s *state) wantedLinks() map[string]bool {
	want := map[string]bool{}
	for l := range s.pendingLinks {
		want[l] = true
	}
	if g := s.global; g != nil {
		want[g.rec.Interface] = true
	}
	for _, svc := range s.services {
		want[svc.rec.Bridge] = true
		if svc.rec.Interface != "" {
			want[svc.rec.Interface] = true
		}
	}
	for _, a := range s.attach {
		if a.HostLink != "" {
			want[a.HostLink] = true
		}
		if a.HostLinkGlobal != "" {
			want[a.HostLinkGlobal] = true
		}
	}
	return want
}

// keepOnly drops the entries of m whose keys a round did not see: state
// of peers that are gone.
func keepOnly[V any](m map[string]V, seen map[string]bool) {
	maps.DeleteFunc(m, func(k string, _ V) bool { return !seen[k] })
}
