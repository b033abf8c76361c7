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

// globalRequest is a validated setup_global_overlay.
type globalRequest struct {
	protocol.SetupGlobalOverlay
	cluster netip.Prefix
	slice   netip.Prefix // invalid: not sent
	adopt   *wgtypes.Key // the request's private_key
}

// globalPlan is what a setup_global_overlay will do, decided from the
// request and the desired state before anything changes.
type globalPlan struct {
	old       *globalState
	prevSlice netip.Prefix
	slice     netip.Prefix
	explicit  bool // the slice came from the main daemon
	nodeIP    netip.Addr
	pool      *ipam.Pool
	key       wgtypes.Key
	keySource string
	node      store.Node // the node record to commit
	rec       store.Global
	fresh     bool // a new device (none yet, or a new name)
}

// setupGlobal brings up (or adopts, or re-addresses) the global overlay:
// validate, plan, bring the device to the plan, commit, publish. A failure
// at any step leaves the device and the state as they were.
func (e *Engine) setupGlobal(ctx context.Context, r protocol.SetupGlobalOverlay) (protocol.Response, error) {
	req, err := e.parseGlobalRequest(r)
	if err != nil {
		return nil, err
	}
	// Names take seconds to resolve; nothing may wait for that.
	var peers []store.Peer
	e.locked(func() { peers = e.st.peersOf(scopeGlobal) })
	e.resolveEndpoints(ctx, peers)

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
	if req.cluster, err = parseCIDRField("cluster_cidr", r.ClusterCIDR); err != nil {
		return req, err
	}
	cluster := req.cluster
	if r.SliceCIDR != "" {
		if req.slice, err = parseCIDRField("slice_cidr", r.SliceCIDR); err != nil {
			return req, err
		}
		if s := req.slice; s.Addr().Is4() != cluster.Addr().Is4() || s.Bits() < cluster.Bits() || !cluster.Contains(s.Addr()) {
			return req, fmt.Errorf("slice_cidr %s is not inside cluster_cidr %s", s, cluster)
		}
	} else if max := cluster.Addr().BitLen(); e.sliceBits(cluster) <= cluster.Bits() || cluster.Bits() >= max-1 {
		return req, fmt.Errorf("cluster_cidr %s is too small to carve a /%d node slice out of; send slice_cidr or use a larger cluster", cluster, e.sliceBits(cluster))
	}
	if r.WGPort == 0 {
		return req, errors.New("wg_port 0 is not a port; use 1-65535 (ZLayer's default is 51420)")
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

// planGlobal decides the slice, node IP, key and device of a setup and
// builds the new slice pool (pure), so a slice that cannot hold what it
// must fails before anything in the kernel changes.
func (e *Engine) planGlobal(req globalRequest) (globalPlan, error) {
	var (
		p            globalPlan
		prevCluster  netip.Prefix
		prevExplicit bool
		have         wgtypes.Key
		taken        []netip.Prefix
		busy         int
		outside      []string
	)
	e.locked(func() {
		st := e.st
		p.old, p.prevSlice, p.node = st.global, st.slice, st.node
		prevCluster, prevExplicit, have = st.cluster, st.node.SliceExplicit, st.key
		taken = withoutPrefix(st.takenPrefixes(), st.slice)
		if st.slicePool != nil {
			busy = len(st.slicePool.Allocated())
			if p.old != nil {
				busy-- // the node IP moves with the slice
			}
		}
		for name, svc := range st.services {
			if !req.cluster.Contains(svc.subnet.Addr()) {
				outside = append(outside, name+" "+svc.subnet.String())
			}
		}
	})

	var err error
	if p.slice, p.explicit, err = e.chooseSlice(req, p.prevSlice, prevCluster, prevExplicit, p.node.Identity, taken); err != nil {
		return p, err
	}
	if p.prevSlice.IsValid() && p.slice != p.prevSlice && busy > 0 {
		return p, fmt.Errorf("cannot move this node from slice %s to %s while %d addresses of %s are in use (containers with join_global, guests, allocate_ip); detach or release them first", p.prevSlice, p.slice, busy, p.prevSlice)
	}
	if prevCluster.IsValid() && req.cluster != prevCluster && len(outside) > 0 {
		return p, fmt.Errorf("cluster_cidr %s does not contain the subnets of services %s; tear them down first", req.cluster, strings.Join(outside, ", "))
	}
	var ok bool
	if p.nodeIP, ok = ipam.FirstUsable(p.slice); !ok {
		return p, fmt.Errorf("node slice %s has no usable address", p.slice)
	}
	if p.key, p.keySource, err = e.chooseNodeKey(req.adopt, have, p.node); err != nil {
		return p, err
	}
	p.rec = store.Global{
		Deployment:  req.Deployment,
		InstanceID:  req.InstanceID,
		ClusterCIDR: req.cluster.String(),
		NodeIP:      p.nodeIP.String(),
		WGPort:      req.WGPort,
		NATEnabled:  req.NATEnabled,
		Interface:   ifName("g", req.Deployment),
		MTU:         e.cfg.MTU,
	}
	p.node.PrivateKey, p.node.KeySource = p.key.String(), p.keySource
	p.node.ClusterCIDR, p.node.SliceCIDR, p.node.SliceExplicit = req.cluster.String(), p.slice.String(), p.explicit
	p.fresh = p.old == nil || p.old.dev == nil || p.old.rec.Interface != p.rec.Interface
	e.locked(func() { p.pool, err = e.buildSlicePool(p.slice, p.nodeIP) })
	return p, err
}

// chooseSlice picks the node's slice: an explicit one wins; else the one
// the node has in this cluster; else one placed from the node's identity,
// avoiding taken. explicit says whether the main daemon chose it.
func (e *Engine) chooseSlice(req globalRequest, prev, prevCluster netip.Prefix, prevExplicit bool, identity string, taken []netip.Prefix) (netip.Prefix, bool, error) {
	switch {
	case req.slice.IsValid():
		return req.slice, true, nil
	case prev.IsValid() && prevCluster == req.cluster:
		return prev, prevExplicit, nil
	}
	s, err := ipam.PlaceNodeSlice(req.cluster, e.sliceBits(req.cluster), identity, taken)
	if err != nil {
		return netip.Prefix{}, false, fmt.Errorf("self-assign a node slice in %s: %w", req.cluster, err)
	}
	return s, false, nil
}

// bringUpGlobal opens the planned device, or brings the existing one to
// the plan.
func (e *Engine) bringUpGlobal(p globalPlan) (*device, error) {
	spec := e.globalSpec(p.rec, p.key, netip.MustParsePrefix(p.node.ClusterCIDR), p.nodeIP)
	if p.fresh {
		spec.bind = e.globalBind()
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
		if p.old != nil && (p.old.nodeIP != p.nodeIP || p.slice != p.prevSlice) {
			if err := tx.DeleteAllocation(poolSlice, p.old.nodeIP.String()); err != nil {
				return err
			}
		}
		if err := tx.PutAllocation(store.Allocation{Pool: poolSlice, Addr: p.nodeIP.String(), Owner: ownerNode}); err != nil {
			return err
		}
		return tx.PutGlobal(p.rec)
	})
}

// publishGlobal makes the committed plan the desired state and lets the
// rest of the node follow it.
func (e *Engine) publishGlobal(p globalPlan, dev *device) {
	e.locked(func() {
		st := e.st
		if p.old != nil {
			delete(st.owners, allocKey(poolSlice, p.old.nodeIP))
		}
		st.owners[allocKey(poolSlice, p.nodeIP)] = ownerNode
		st.node, st.key = p.node, p.key
		st.cluster, st.slice, st.slicePool = netip.MustParsePrefix(p.node.ClusterCIDR), p.slice, p.pool
		st.global = &globalState{rec: p.rec, nodeIP: p.nodeIP, dev: dev}
	})
	if p.fresh && p.old != nil && p.old.dev != nil {
		p.old.dev.wg.Close()
	}
	e.log.Info("global overlay up", "interface", p.rec.Interface, "node_ip", p.nodeIP, "slice", p.slice,
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
	if p.rec.NATEnabled {
		e.probeSoon()
	}
}

// buildSlicePool makes the address pool of slice: the node IP, every
// address still recorded in it, and every service range inside it carved
// out. Called with e.mu held.
func (e *Engine) buildSlicePool(slice netip.Prefix, nodeIP netip.Addr) (*ipam.Pool, error) {
	pool, err := ipam.NewPool(slice)
	if err != nil {
		return nil, err
	}
	for name, svc := range e.st.services {
		for _, sub := range svc.subnets() {
			if slice.Contains(sub.Addr()) {
				if err := pool.Exclude(sub); err != nil {
					return nil, fmt.Errorf("service %s subnet %s inside slice %s: %w", name, sub, slice, err)
				}
			}
		}
	}
	if err := pool.AllocateSpecific(nodeIP); err != nil {
		return nil, fmt.Errorf("node IP %s: %w", nodeIP, err)
	}
	for k, owner := range e.st.owners {
		pname, addr, _ := strings.Cut(k, "|")
		if pname != poolSlice || owner == ownerNode {
			continue
		}
		a, err := netip.ParseAddr(addr)
		if err != nil || !slice.Contains(a) {
			continue
		}
		if err := pool.AllocateSpecific(a); err != nil {
			return nil, fmt.Errorf("address %s (%s): %w", a, owner, err)
		}
	}
	return pool, nil
}

// globalSpec is the global device as the desired state describes it.
func (e *Engine) globalSpec(rec store.Global, key wgtypes.Key, cluster netip.Prefix, nodeIP netip.Addr) deviceSpec {
	var peers []store.Peer
	e.locked(func() { peers = e.st.peersOf(scopeGlobal) })
	// The node IP carries the cluster's prefix length, so the kernel
	// routes the whole cluster CIDR into the device; our bridges' subnets
	// are more specific and stay local.
	return deviceSpec{
		name:   rec.Interface,
		key:    key,
		port:   rec.WGPort,
		addrs:  []netip.Prefix{netip.PrefixFrom(nodeIP, cluster.Bits())},
		peers:  peers,
		routes: peerRoutes(peers, []netip.Prefix{cluster}),
	}
}

// currentGlobalSpec is globalSpec of the desired state as it is now, for
// the device applier to read under the device's lock.
func (e *Engine) currentGlobalSpec() deviceSpec {
	var g *globalState
	var key wgtypes.Key
	var cluster netip.Prefix
	e.locked(func() { g, key, cluster = e.st.global, e.st.key, e.st.cluster })
	if g == nil {
		return deviceSpec{}
	}
	return e.globalSpec(g.rec, key, cluster, g.nodeIP)
}

// restoreGlobal puts a device that a failed update touched back to its
// previous desired state (best effort: the failure is already reported).
func (e *Engine) restoreGlobal(old *globalState) {
	if old == nil || old.dev == nil {
		return
	}
	var key wgtypes.Key
	var cluster netip.Prefix
	e.locked(func() { key, cluster = e.st.key, e.st.cluster })
	spec := e.globalSpec(old.rec, key, cluster, old.nodeIP)
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
		return tx.DeleteGlobal()
	}); err != nil {
		return nil, err
	}
	e.locked(func() {
		e.st.global = nil
		delete(e.st.owners, allocKey(poolSlice, old.nodeIP))
		if e.st.slicePool != nil {
			e.st.slicePool.Release(old.nodeIP)
			// The node keeps its slice, and so its node IP: nothing else
			// may take it, or the next setup cannot have it back.
			e.st.slicePool.Reserve(old.nodeIP)
		}
	})
	e.removeGlobalKernel(ctx, old)
	e.log.Info("global overlay torn down", "interface", old.rec.Interface)
	e.topologyChanged()
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
