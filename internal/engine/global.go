package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func (e *Engine) sliceBits(cluster netip.Prefix) int {
	if e.cfg.SliceBits > 0 && cluster.Addr().Is4() == (e.cfg.SliceBits <= 32) {
		return e.cfg.SliceBits
	}
	return ipam.DefaultSliceBits(cluster)
}

// globalRequest is a validated setup_global_overlay. A dual-stack cluster
// has a second family (cluster2, and slice2 when slices were sent).
type globalRequest struct {
	protocol.SetupGlobalOverlay
	cluster, cluster2 netip.Prefix
	slice, slice2     netip.Prefix // invalid: not sent
	adopt             *wgtypes.Key // the request's private_key
	turn              []store.TURNServer
}

// globalPlan is what a setup_global_overlay will do, decided from the
// request and the desired state before anything changes.
type globalPlan struct {
	old       *globalState
	fam       famPlan  // the first family
	fam2      *famPlan // the second family of a dual-stack cluster
	explicit  bool     // the slices came from the main daemon
	key       wgtypes.Key
	keySource string
	node      store.Node // the node record to commit
	rec       store.Global
	fresh     bool // a new device (none yet, or a new name)
}

// famPlan is one address family of a global plan.
type famPlan struct {
	cluster   netip.Prefix
	prevSlice netip.Prefix
	slice     netip.Prefix
	nodeIP    netip.Addr
	prevIP    netip.Addr // the node IP of the old plan, if any
	pool      *ipam.Pool
	poolName  string
}

func (p *globalPlan) families() []*famPlan {
	if p.fam2 == nil {
		return []*famPlan{&p.fam}
	}
	return []*famPlan{&p.fam, p.fam2}
}

// setupGlobal brings up (or adopts, or re-addresses) the global overlay:
// validate, plan, bring the device to the plan, commit, publish. A failure
// at any step leaves the device and the state as they were.
func (e *Engine) setupGlobal(ctx context.Context, r protocol.SetupGlobalOverlay) (protocol.Response, error) {
	req, err := e.parseGlobalRequest(r)
	if err != nil {
		return nil, err
	}
	// Names take seconds to resolve; nothing may wait for that. The main
	// daemon sends this request at its own start, so a resolver that does
	// not answer costs it at most the budget a restore gives names; the
	// names left over come with the next reconcile pass.
	var peers []store.Peer
	e.locked(func() { peers = e.st.peersOf(scopeGlobal) })
	rctx, cancel := context.WithTimeout(ctx, startupResolveBudget)
	e.resolveEndpoints(rctx, peers)
	cancel()

	release, err := e.holdExclusive(ctx, nodeLock())
	if err != nil {
		return nil, err
	}
	defer release()
	plan, err := e.planGlobal(req)
	if err != nil {
		return nil, err
	}
	dev, err := e.bringUpGlobal(plan)
	if err != nil {
		return nil, err
	}
	if err := e.commitGlobal(plan); err != nil {
		e.undoBringUp(plan, dev)
		return nil, err
	}
	e.publishGlobal(plan, dev)
	return protocol.BridgeName{Name: plan.rec.Interface}, nil
}

func (e *Engine) parseGlobalRequest(r protocol.SetupGlobalOverlay) (globalRequest, error) {
	req := globalRequest{SetupGlobalOverlay: r}
	if err := validName("deployment", r.Deployment); err != nil {
		return req, err
	}
	if len(r.InstanceID) > 253 {
		return req, fmt.Errorf("instance_id is %d bytes; at most 253 are allowed", len(r.InstanceID))
	}
	var err error
	if r.ClusterCIDR == "" {
		return req, errors.New("cluster_cidr is empty")
	}
	if req.cluster, req.cluster2, err = parseCIDRPair("cluster_cidr", r.ClusterCIDR); err != nil {
		return req, err
	}
	if req.slice, req.slice2, err = parseCIDRPair("slice_cidr", r.SliceCIDR); err != nil {
		return req, err
	}
	if req.slice2.IsValid() && req.slice.Addr().Is4() != req.cluster.Addr().Is4() {
		req.slice, req.slice2 = req.slice2, req.slice // given in the other order
	}
	if req.slice2.IsValid() && !req.cluster2.IsValid() {
		return req, fmt.Errorf("slice_cidr %s has a second family, cluster_cidr %s does not", r.SliceCIDR, r.ClusterCIDR)
	}
	for _, f := range [][2]netip.Prefix{{req.cluster, req.slice}, {req.cluster2, req.slice2}} {
		if err := e.checkSliceOf(f[0], f[1]); err != nil {
			return req, err
		}
	}
	if r.WGPort == 0 {
		return req, errors.New("wg_port 0 is not a port; use 1-65535 (ZLayer's default is 51420)")
	}
	if req.turn, err = parseTURNServers(r.TURNServers); err != nil {
		return req, err
	}
	// Without a backend (Config.WG nil) there is no kind to ask;
	// openDevice fails with errNoBackend.
	if len(req.turn) > 0 && e.cfg.WG != nil && e.cfg.WG.Kind() == wg.KindKernel {
		// Refused here, not when the device opens: an existing kernel
		// device would otherwise be kept and the relay never run.
		return req, fmt.Errorf("turn_servers: %w; run zlayer-overlayd with --wireguard userspace to relay through TURN", wg.ErrOwnBind)
	}
	if r.PrivateKey != "" {
		k, err := wg.ParseKey(r.PrivateKey)
		if err != nil {
			return req, fmt.Errorf("private_key: %w", err)
		}
		req.adopt = &k
	}
	return req, nil
}

// checkSliceOf checks a family's slice lies in its cluster, or, when no
// slice was sent, that one can be carved from it.
func (e *Engine) checkSliceOf(cluster, slice netip.Prefix) error {
	switch {
	case !cluster.IsValid():
		return nil
	case slice.IsValid():
		if slice.Addr().Is4() != cluster.Addr().Is4() || slice.Bits() < cluster.Bits() || !cluster.Contains(slice.Addr()) {
			return fmt.Errorf("slice_cidr %s is not inside cluster_cidr %s", slice, cluster)
		}
	case e.sliceBits(cluster) <= cluster.Bits() || cluster.Bits() >= cluster.Addr().BitLen()-1:
		return fmt.Errorf("cluster_cidr %s is too small to carve a /%d node slice out of; send slice_cidr or use a larger cluster", cluster, e.sliceBits(cluster))
	}
	return nil
}

// planGlobal decides the slice, node IP, key and device of a setup and
// builds the new slice pool (pure), so a slice that cannot hold what it
// must fails before anything in the kernel changes.
func (e *Engine) planGlobal(req globalRequest) (globalPlan, error) {
	var (
		p            globalPlan
		prev         globalView
		prevExplicit bool
		have         wgtypes.Key
		outside      []string
	)
	e.locked(func() {
		st := e.st
		p.old, p.node, prev = st.global, st.node, e.globalViewLocked()
		prevExplicit, have = st.node.SliceExplicit, st.key
		for name, svc := range st.services {
			for _, sub := range svc.allSubnets() {
				if !req.cluster.Contains(sub.Addr()) && !req.cluster2.Contains(sub.Addr()) {
					outside = append(outside, name+" "+sub.String())
				}
			}
		}
	})
	if prev.cluster.IsValid() && (req.cluster != prev.cluster || req.cluster2 != prev.cluster2) && len(outside) > 0 {
		return p, fmt.Errorf("cluster_cidr %s does not contain the subnets of services %s; tear them down first", req.ClusterCIDR, strings.Join(outside, ", "))
	}
	p.explicit = req.slice.IsValid()
	keep := !req.slice.IsValid() && prev.cluster == req.cluster && prev.cluster2 == req.cluster2
	if keep {
		p.explicit = prevExplicit
	}
	var err error
	if p.fam, err = e.planFamily(req.cluster, req.slice, prev.fam(0), keep, p.node.Identity, poolSlice); err != nil {
		return p, err
	}
	if req.cluster2.IsValid() {
		f2, err := e.planFamily(req.cluster2, req.slice2, prev.fam(1), keep, p.node.Identity, poolSlice2)
		if err != nil {
			return p, err
		}
		p.fam2 = &f2
	}
	if p.key, p.keySource, err = e.chooseNodeKey(req.adopt, have, p.node); err != nil {
		return p, err
	}
	p.rec = store.Global{
		Deployment:  req.Deployment,
		InstanceID:  req.InstanceID,
		ClusterCIDR: joinPrefixes(req.cluster, req.cluster2),
		NodeIP:      p.fam.nodeIP.String(),
		WGPort:      req.WGPort,
		NATEnabled:  req.NATEnabled,
		Interface:   ifName("g", req.Deployment),
		MTU:         e.cfg.MTU,
		TURNServers: req.turn,
	}
	slice2 := netip.Prefix{}
	if p.fam2 != nil {
		p.rec.NodeIP2 = p.fam2.nodeIP.String()
		slice2 = p.fam2.slice
	}
	p.node.PrivateKey, p.node.KeySource = p.key.String(), p.keySource
	p.node.ClusterCIDR, p.node.SliceCIDR, p.node.SliceExplicit = p.rec.ClusterCIDR, joinPrefixes(p.fam.slice, slice2), p.explicit
	p.fresh = p.old == nil || p.old.dev == nil || p.old.rec.Interface != p.rec.Interface
	return p, nil
}

// globalView is the node's slices as the desired state has them, by family
// of the old cluster.
type globalView struct {
	cluster, cluster2 netip.Prefix
	fams              [2]prevFamily
}

// prevFamily is one family of the node before a setup.
type prevFamily struct {
	cluster, slice netip.Prefix
	nodeIP         netip.Addr
	busy           int // addresses of the slice in use, the node IP not counted
	taken          []netip.Prefix
}

func (v globalView) fam(i int) prevFamily { return v.fams[i] }

// globalViewLocked reads the node's families. Called with e.mu held.
func (e *Engine) globalViewLocked() globalView {
	st := e.st
	v := globalView{cluster: st.cluster}
	fill := func(i int, cluster, slice netip.Prefix, pool *ipam.Pool, ip netip.Addr) {
		f := prevFamily{cluster: cluster, slice: slice, nodeIP: ip, taken: withoutPrefix(st.takenPrefixes(), slice)}
		if pool != nil {
			f.busy = len(pool.Allocated())
			if ip.IsValid() {
				f.busy-- // the node IP moves with the slice
			}
		}
		v.fams[i] = f
	}
	var ip1, ip2 netip.Addr
	if g := st.global; g != nil {
		ip1, ip2 = g.nodeIP, g.nodeIP2
	}
	fill(0, st.cluster, st.slice, st.slicePool, ip1)
	if st.fam2 != nil {
		v.cluster2 = st.fam2.cluster
		fill(1, st.fam2.cluster, st.fam2.slice, st.fam2.pool, ip2)
	}
	return v
}

// planFamily decides one family's slice, node IP and pool. keep reuses the
// slice the node has (same clusters, no slice sent).
func (e *Engine) planFamily(cluster, slice netip.Prefix, prev prevFamily, keep bool, identity, poolName string) (famPlan, error) {
	f := famPlan{cluster: cluster, prevSlice: prev.slice, prevIP: prev.nodeIP, poolName: poolName}
	if cluster.Addr().Is4() != prev.cluster.Addr().Is4() || !prev.cluster.IsValid() {
		// A family the node did not have in this position: nothing of it
		// moves.
		f.prevSlice, f.prevIP = netip.Prefix{}, netip.Addr{}
		prev = prevFamily{taken: prev.taken}
	}
	switch {
	case slice.IsValid():
		f.slice = slice
	case keep && prev.slice.IsValid():
		f.slice = prev.slice
	default:
		s, err := ipam.PlaceNodeSlice(cluster, e.sliceBits(cluster), identity, prev.taken)
		if err != nil {
			return f, fmt.Errorf("self-assign a node slice in %s: %w", cluster, err)
		}
		f.slice = s
	}
	if prev.slice.IsValid() && f.slice != prev.slice && prev.busy > 0 {
		return f, fmt.Errorf("cannot move this node from slice %s to %s while %d addresses of %s are in use (containers with join_global, guests, allocate_ip); detach or release them first", prev.slice, f.slice, prev.busy, prev.slice)
	}
	var ok bool
	if f.nodeIP, ok = ipam.FirstUsable(f.slice); !ok {
		return f, fmt.Errorf("node slice %s has no usable address", f.slice)
	}
	var err error
	e.locked(func() { f.pool, err = e.buildSlicePool(f.slice, f.nodeIP, f.poolName) })
	return f, err
}

// bringUpGlobal opens the planned device, or brings the existing one to
// the plan.
func (e *Engine) bringUpGlobal(p globalPlan) (*device, error) {
	spec := e.globalSpec(p.rec, p.key)
	if p.fresh {
		spec.bind = e.globalBind(p.rec)
		dev, err := e.openDevice(spec)
		if err != nil {
			return nil, fmt.Errorf("bring up %s: %w", p.rec.Interface, err)
		}
		return dev, nil
	}
	if _, err := e.syncDevice(p.old.dev, func() deviceSpec { return spec }); err != nil {
		e.restoreGlobal(p.old)
		return nil, fmt.Errorf("update %s: %w", p.rec.Interface, err)
	}
	return p.old.dev, nil
}

// undoBringUp puts the device back after a failed commit.
func (e *Engine) undoBringUp(p globalPlan, dev *device) {
	if p.fresh {
		dev.wg.Close()
		return
	}
	e.restoreGlobal(p.old)
}

// commitGlobal writes the plan to the store.
func (e *Engine) commitGlobal(p globalPlan) error {
	return e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutNode(p.node); err != nil {
			return err
		}
		for _, f := range p.families() {
			if f.prevIP.IsValid() && f.prevIP != f.nodeIP {
				if err := tx.DeleteAllocation(f.poolName, f.prevIP.String()); err != nil {
					return err
				}
			}
			if err := tx.PutAllocation(store.Allocation{Pool: f.poolName, Addr: f.nodeIP.String(), Owner: ownerNode}); err != nil {
				return err
			}
		}
		return tx.PutGlobal(p.rec)
	})
}

// publishGlobal makes the committed plan the desired state and lets the
// rest of the node follow it.
func (e *Engine) publishGlobal(p globalPlan, dev *device) {
	e.locked(func() {
		st := e.st
		for _, f := range p.families() {
			if f.prevIP.IsValid() {
				delete(st.owners, allocKey(f.poolName, f.prevIP))
			}
			st.owners[allocKey(f.poolName, f.nodeIP)] = ownerNode
		}
		st.node, st.key = p.node, p.key
		st.cluster, st.slice, st.slicePool = p.fam.cluster, p.fam.slice, p.fam.pool
		st.global = &globalState{rec: p.rec, nodeIP: p.fam.nodeIP, dev: dev}
		st.fam2 = nil
		if p.fam2 != nil {
			st.fam2 = &family{cluster: p.fam2.cluster, slice: p.fam2.slice, pool: p.fam2.pool}
			st.global.nodeIP2 = p.fam2.nodeIP
		}
	})
	if p.fresh {
		// Only now, not when the device opened: a setup that fails
		// before this keeps the old device, which keeps its bind.
		e.natUseBind(dev)
		if p.old != nil && p.old.dev != nil {
			p.old.dev.wg.Close()
		}
	}
	e.log.Info("global overlay up", "interface", p.rec.Interface, "node_ip", p.rec.NodeIP, "node_ip2", p.rec.NodeIP2, "slice", p.node.SliceCIDR,
		"slice_source", map[bool]string{true: "main daemon", false: "self-assigned"}[p.explicit],
		"public_key", p.key.PublicKey().String(), "key_source", p.keySource, "port", p.rec.WGPort)
	// Containers with join_global keep their links across a teardown, but
	// the kernel dropped their host routes with the node IP: put them back
	// now, not at the next reconcile.
	e.restoreHostRoutes()
	if exp := p.node.ExpectedPubkey; exp != "" && exp != p.key.PublicKey().String() {
		e.log.Warn("set_local_wg_pubkey gave a different key than the device's; peers will reject our handshakes until the keys agree",
			"expected", truncate(exp), "device", p.key.PublicKey().String())
	}
	e.topologyChanged()
	e.natFollowGlobal()
}

// buildSlicePool makes the address pool of slice: the node IP, every
// address still recorded in it (pool poolName), and every service range
// inside it carved out. Called with e.mu held.
func (e *Engine) buildSlicePool(slice netip.Prefix, nodeIP netip.Addr, poolName string) (*ipam.Pool, error) {
	pool, err := ipam.NewPool(slice)
	if err != nil {
		return nil, err
	}
	for name, svc := range e.st.services {
		for _, sub := range svc.allSubnets() {
			if slice.Contains(sub.Addr()) {
				if err := pool.Exclude(sub); err != nil {
					return nil, fmt.Errorf("service %s subnet %s inside slice %s: %w", name, sub, slice, err)
				}
			}
		}
	}
	// A torn-down service's range stays out until its containers' links
	// are gone (returnRangesWhenGone gives it back).
	for sub, name := range e.st.returning {
		if slice.Contains(sub.Addr()) {
			if err := pool.Exclude(sub); err != nil {
				return nil, fmt.Errorf("torn-down service %s range %s inside slice %s: %w", name, sub, slice, err)
			}
		}
	}
	if err := pool.AllocateSpecific(nodeIP); err != nil {
		return nil, fmt.Errorf("node IP %s: %w", nodeIP, err)
	}
	for k, owner := range e.st.owners {
		pname, addr, _ := strings.Cut(k, "|")
		if pname != poolName || owner == ownerNode {
			continue
		}
		a, err := netip.ParseAddr(addr)
		if err != nil || !slice.Contains(a) || pool.IsExcluded(a) {
			continue // an excluded one is kept as loadAllocations keeps it
		}
		if err := pool.AllocateSpecific(a); err != nil {
			return nil, fmt.Errorf("address %s (%s): %w", a, owner, err)
		}
	}
	return pool, nil
}

// globalSpec is the global device as the desired state and the global
// record describe it.
func (e *Engine) globalSpec(rec store.Global, key wgtypes.Key) deviceSpec {
	var peers []store.Peer
	e.locked(func() { peers = e.st.peersOf(scopeGlobal) })
	// A node IP carries its cluster's prefix length, so the kernel routes
	// the whole cluster CIDR into the device; our bridges' subnets are more
	// specific and stay local.
	c1, c2, _ := parseCIDRPair("cluster_cidr", rec.ClusterCIDR)
	spec := deviceSpec{
		name:   rec.Interface,
		key:    key,
		port:   rec.WGPort,
		addrs:  []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(rec.NodeIP), c1.Bits())},
		peers:  peers,
		routes: peerRoutes(peers, []netip.Prefix{c1, c2}),
	}
	if rec.NodeIP2 != "" {
		spec.addrs = append(spec.addrs, netip.PrefixFrom(netip.MustParseAddr(rec.NodeIP2), c2.Bits()))
	}
	return spec
}

// currentGlobalSpec is globalSpec of the desired state as it is now, for
// the device applier to read under the device's lock.
func (e *Engine) currentGlobalSpec() deviceSpec {
	var g *globalState
	var key wgtypes.Key
	e.locked(func() { g, key = e.st.global, e.st.key })
	if g == nil {
		return deviceSpec{}
	}
	return e.globalSpec(g.rec, key)
}

// restoreGlobal puts a device that a failed update touched back to its
// previous desired state (best effort: the failure is already reported).
func (e *Engine) restoreGlobal(old *globalState) {
	if old == nil || old.dev == nil {
		return
	}
	var key wgtypes.Key
	e.locked(func() { key = e.st.key })
	spec := e.globalSpec(old.rec, key)
	if _, err := e.syncDevice(old.dev, func() deviceSpec { return spec }); err != nil {
		e.log.Error("could not restore the global device after a failed change; the next reconcile retries", "err", err)
	}
}

// teardownGlobal removes the global device. The node keeps its key and its
// slice (so a later setup gets the same identity and node IP) and the
// global peers are remembered as desired state, so a setup with the same
// cluster brings the mesh back without the main daemon re-adding them.
func (e *Engine) teardownGlobal(ctx context.Context) (protocol.Response, error) {
	release, err := e.holdExclusive(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	var old *globalState
	e.locked(func() { old = e.st.global })
	if old == nil {
		return protocol.OK{}, nil
	}
	if err := e.store.Update(func(tx *store.Tx) error {
		if err := tx.DeleteAllocation(poolSlice, old.nodeIP.String()); err != nil {
			return err
		}
		if old.nodeIP2.IsValid() {
			if err := tx.DeleteAllocation(poolSlice2, old.nodeIP2.String()); err != nil {
				return err
			}
		}
		return tx.DeleteGlobal()
	}); err != nil {
		return nil, err
	}
	e.locked(func() {
		e.st.global = nil
		// The node keeps its slices, and so its node IPs: nothing else may
		// take them, or the next setup cannot have them back.
		for _, ip := range []netip.Addr{old.nodeIP, old.nodeIP2} {
			if !ip.IsValid() {
				continue
			}
			name, pool := e.st.slicePoolOf(ip)
			delete(e.st.owners, allocKey(name, ip))
			if pool != nil {
				pool.Release(ip)
				pool.Reserve(ip)
			}
		}
	})
	e.removeGlobalKernel(ctx, old)
	e.log.Info("global overlay torn down", "interface", old.rec.Interface)
	e.topologyChanged()
	e.natFollowGlobal()
	return protocol.OK{}, nil
}

// removeGlobalKernel deletes what a torn-down global overlay had in the
// kernel (and HNS), best effort: the desired state no longer has it, and
// reconcile removes what this leaves.
func (e *Engine) removeGlobalKernel(ctx context.Context, old *globalState) {
	if old.dev != nil {
		if err := old.dev.wg.Close(); err != nil {
			e.log.Warn("closing the global device", "err", err)
		}
	}
	if e.cfg.Net != nil {
		// A kernel device survives Close of a userspace handle only if
		// someone else holds it; make sure the link is gone.
		if err := e.cfg.Net.DeleteLink(old.rec.Interface); err != nil {
			e.log.Warn("deleting the global device link", "err", err)
		}
	}
	if e.cfg.HCN != nil {
		// The Internal network lives on the node slice behind the node IP
		// that just went away; containers still attached keep their
		// endpoints until they are detached, and HNS refuses to delete a
		// network with endpoints, so a failure here is only logged.
		if err := e.cfg.HCN.DeleteNetwork(ctx, hcnNetworkName(old.rec.Deployment)); err != nil {
			e.log.Warn("deleting the HCN network", "network", hcnNetworkName(old.rec.Deployment), "err", err)
		}
	}
}

func withoutPrefix(ps []netip.Prefix, p netip.Prefix) []netip.Prefix {
	out := ps[:0:0]
	for _, x := range ps {
		if x != p {
			out = append(out, x)
		}
	}
	return out
}
