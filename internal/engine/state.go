package engine

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Pools and owners as recorded in the store.
const (
	poolSlice   = "slice"
	ownerNode   = "node"
	ownerGW     = "gateway"
	ownerAPI    = "api"
	attachOwner = "attach:"
	guestOwner  = "guest:"
)

func servicePool(name string) string { return "service:" + name }

// state is the engine's in-memory copy of the desired state: the store's
// records plus what is derived from them (parsed prefixes, address pools,
// open devices). It is guarded by Engine.mu, which is never held across
// kernel or store I/O.
type state struct {
	node store.Node
	key  wgtypes.Key // node key; zero until generated
	// slice is the node's slice assignment (kept across teardowns);
	// slicePool hands out its addresses.
	cluster   netip.Prefix
	slice     netip.Prefix
	slicePool *ipam.Pool

	global   *globalState
	services map[string]*serviceState
	attach   map[string]*store.Attachment
	peers    map[string]*store.Peer // peerKey(scope, pubkey)
	dns      map[string]store.DNSRecord
	// owners holds every allocation's owner, by pool|addr.
	owners map[string]string
}

// globalState is the live global overlay.
type globalState struct {
	rec    store.Global
	nodeIP netip.Addr
	dev    wg.Device // nil when the kernel side is not (yet) up
}

// serviceState is one service overlay.
type serviceState struct {
	rec     store.Service
	subnet  netip.Prefix
	gateway netip.Addr
	pool    *ipam.Pool
	key     wgtypes.Key // dedicated only
	dev     wg.Device   // dedicated only; nil until up
}

func (s *serviceState) dedicated() bool { return s.rec.Mode == "dedicated" }

func peerKey(scope, pubkey string) string { return scope + "|" + pubkey }

func allocKey(pool string, a netip.Addr) string { return pool + "|" + a.String() }

// loadState rebuilds the in-memory state from what the store holds. It
// refuses records that contradict each other rather than guessing.
func loadState(st *store.State) (*state, error) {
	s := &state{
		node:     st.Node,
		services: map[string]*serviceState{},
		attach:   map[string]*store.Attachment{},
		peers:    map[string]*store.Peer{},
		dns:      map[string]store.DNSRecord{},
		owners:   map[string]string{},
	}
	if st.Node.PrivateKey != "" {
		k, err := wg.ParseKey(st.Node.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("stored node key: %w", err)
		}
		s.key = k
	}
	if st.Node.ClusterCIDR != "" {
		var err error
		if s.cluster, err = ipam.ParsePrefix(st.Node.ClusterCIDR); err != nil {
			return nil, fmt.Errorf("stored cluster CIDR: %w", err)
		}
		if s.slice, err = ipam.ParsePrefix(st.Node.SliceCIDR); err != nil {
			return nil, fmt.Errorf("stored node slice: %w", err)
		}
		if s.slicePool, err = ipam.NewPool(s.slice); err != nil {
			return nil, err
		}
	}
	if st.Global != nil {
		ip, err := netip.ParseAddr(st.Global.NodeIP)
		if err != nil {
			return nil, fmt.Errorf("stored node IP %q: %w", st.Global.NodeIP, err)
		}
		s.global = &globalState{rec: *st.Global, nodeIP: ip}
	}
	names := make([]string, 0, len(st.Services))
	for name := range st.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		rec := st.Services[name]
		svc, err := newServiceState(rec)
		if err != nil {
			return nil, fmt.Errorf("stored service %s: %w", name, err)
		}
		if rec.SubnetSource == "slice" && s.slicePool != nil && s.slice.Contains(svc.subnet.Addr()) {
			if err := s.slicePool.Exclude(svc.subnet); err != nil {
				return nil, fmt.Errorf("stored service %s: carve %s out of the node slice: %w", name, svc.subnet, err)
			}
		}
		s.services[name] = svc
	}
	// Restore allocations in address order: the pools are fastest that way.
	allocs := slices.Clone(st.Allocations)
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
			return nil, fmt.Errorf("stored allocation %s|%s: %w", a.Pool, a.Addr, err)
		}
		pool := s.pool(a.Pool)
		if pool == nil {
			// The pool is gone (a service torn down while the daemon
			// died, or a slice that moved); reconcile drops the record.
			s.owners[allocKey(a.Pool, addr)] = a.Owner
			continue
		}
		if a.Owner == ownerGW {
			if err := pool.Reserve(addr); err != nil {
				return nil, fmt.Errorf("stored gateway %s of %s: %w", addr, a.Pool, err)
			}
		} else if err := pool.AllocateSpecific(addr); err != nil {
			return nil, fmt.Errorf("stored allocation %s of %s (owner %s): %w", addr, a.Pool, a.Owner, err)
		}
		s.owners[allocKey(a.Pool, addr)] = a.Owner
	}
	if st.Global == nil && s.slicePool != nil {
		// A node whose global overlay is torn down keeps its slice and the
		// slice's node IP (see teardownGlobal).
		if ip, ok := ipam.FirstUsable(s.slice); ok && !s.slicePool.IsAllocated(ip) {
			_ = s.slicePool.Reserve(ip) // an address carved out for a service stays with it
		}
	}
	for k, a := range st.Attachments {
		a := a
		s.attach[k] = &a
	}
	for _, p := range st.Peers {
		p := p
		s.peers[peerKey(p.Scope, p.PublicKey)] = &p
	}
	for k, r := range st.DNS {
		s.dns[k] = r
	}
	return s, nil
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
	if rec.PrivateKey != "" {
		if svc.key, err = wg.ParseKey(rec.PrivateKey); err != nil {
			return nil, fmt.Errorf("dedicated key: %w", err)
		}
	}
	return svc, nil
}

// pool returns the address pool named as in the store, or nil.
func (s *state) pool(name string) *ipam.Pool {
	if name == poolSlice {
		return s.slicePool
	}
	if svc, ok := strings.CutPrefix(name, "service:"); ok {
		if sv := s.services[svc]; sv != nil {
			return sv.pool
		}
	}
	return nil
}

// poolFor finds the pool an address belongs to: a service subnet first
// (they may be carved out of the slice), then the slice.
func (s *state) poolFor(a netip.Addr) (string, *ipam.Pool) {
	for name, svc := range s.services {
		if svc.subnet.Contains(a) {
			return servicePool(name), svc.pool
		}
	}
	if s.slicePool != nil && s.slice.Contains(a) {
		return poolSlice, s.slicePool
	}
	return "", nil
}

// takenPrefixes lists every prefix this node already uses or knows to be
// used by others, so new placements avoid them: our service subnets, our
// slice, and every peer's allowed IPs (other nodes' slices and subnets).
func (s *state) takenPrefixes() []netip.Prefix {
	var out []netip.Prefix
	if s.slice.IsValid() {
		out = append(out, s.slice)
	}
	for _, svc := range s.services {
		out = append(out, svc.subnet)
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
