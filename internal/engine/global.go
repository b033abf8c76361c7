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

// setupGlobal brings up (or adopts, or re-addresses) the global overlay.
func (e *Engine) setupGlobal(ctx context.Context, r protocol.SetupGlobalOverlay) (protocol.Response, error) {
	if err := validName("deployment", r.Deployment); err != nil {
		return nil, err
	}
	if len(r.InstanceID) > 253 {
		return nil, fmt.Errorf("instance_id is %d bytes; at most 253 are allowed", len(r.InstanceID))
	}
	cluster, err := parseCIDRField("cluster_cidr", r.ClusterCIDR)
	if err != nil {
		return nil, err
	}
	var slice netip.Prefix
	if r.SliceCIDR != "" {
		if slice, err = parseCIDRField("slice_cidr", r.SliceCIDR); err != nil {
			return nil, err
		}
		if slice.Addr().Is4() != cluster.Addr().Is4() || slice.Bits() < cluster.Bits() || !cluster.Contains(slice.Addr()) {
			return nil, fmt.Errorf("slice_cidr %s is not inside cluster_cidr %s", slice, cluster)
		}
	} else if max := cluster.Addr().BitLen(); e.sliceBits(cluster) <= cluster.Bits() || cluster.Bits() >= max-1 {
		return nil, fmt.Errorf("cluster_cidr %s is too small to carve a /%d node slice out of; send slice_cidr or use a larger cluster", cluster, e.sliceBits(cluster))
	}
	if r.WGPort == 0 {
		return nil, errors.New("wg_port 0 is not a port; use 1-65535 (ZLayer's default is 51420)")
	}
	var adopt *wgtypes.Key
	if r.PrivateKey != "" {
		k, err := wg.ParseKey(r.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("private_key: %w", err)
		}
		adopt = &k
	}

	e.global.Lock()
	defer e.global.Unlock()
	unlock := e.locks.lock("node")
	defer unlock()

	e.mu.Lock()
	st := e.st
	old := st.global
	prevCluster, prevSlice, prevExplicit, key := st.cluster, st.slice, st.node.SliceExplicit, st.key
	node := st.node
	taken := withoutPrefix(st.takenPrefixes(), prevSlice)
	busy := 0
	if st.slicePool != nil {
		busy = len(st.slicePool.Allocated())
		if old != nil {
			busy-- // the node IP moves with the slice
		}
	}
	var outside []string
	for name, svc := range st.services {
		if !cluster.Contains(svc.subnet.Addr()) {
			outside = append(outside, name+" "+svc.subnet.String())
		}
	}
	e.mu.Unlock()

	// The slice: an explicit one wins; else keep the one we have in this
	// cluster; else place one from the node's identity.
	newSlice, explicit := slice, true
	if !slice.IsValid() {
		if prevSlice.IsValid() && prevCluster == cluster {
			newSlice, explicit = prevSlice, prevExplicit
		} else {
			newSlice, err = ipam.PlaceNodeSlice(cluster, e.sliceBits(cluster), node.Identity, taken)
			if err != nil {
				return nil, fmt.Errorf("self-assign a node slice in %s: %w", cluster, err)
			}
			explicit = false
		}
	}
	if prevSlice.IsValid() && newSlice != prevSlice && busy > 0 {
		return nil, fmt.Errorf("cannot move this node from slice %s to %s while %d addresses of %s are in use (containers with join_global, guests, allocate_ip); detach or release them first", prevSlice, newSlice, busy, prevSlice)
	}
	if prevCluster.IsValid() && cluster != prevCluster && len(outside) > 0 {
		return nil, fmt.Errorf("cluster_cidr %s does not contain the subnets of services %s; tear them down first", cluster, strings.Join(outside, ", "))
	}
	nodeIP, ok := ipam.FirstUsable(newSlice)
	if !ok {
		return nil, fmt.Errorf("node slice %s has no usable address", newSlice)
	}
	key, keySource, err := e.chooseNodeKey(adopt, key, node)
	if err != nil {
		return nil, err
	}
	rec := store.Global{
		Deployment:  r.Deployment,
		InstanceID:  r.InstanceID,
		ClusterCIDR: cluster.String(),
		NodeIP:      nodeIP.String(),
		WGPort:      r.WGPort,
		NATEnabled:  r.NATEnabled,
		Interface:   ifName("g", r.Deployment),
		MTU:         e.cfg.MTU,
	}

	// New pools first (pure), so a slice that cannot hold what it must
	// fails before anything in the kernel changes.
	e.mu.Lock()
	pool, err := e.buildSlicePool(newSlice, nodeIP)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}

	spec := e.globalSpec(rec, key, cluster, nodeIP)
	var dev wg.Device
	fresh := old == nil || old.dev == nil || old.rec.Interface != rec.Interface
	if fresh {
		if dev, err = e.openDevice(ctx, spec); err != nil {
			return nil, fmt.Errorf("bring up %s: %w", rec.Interface, err)
		}
	} else {
		dev = old.dev
		if err := e.syncDevice(ctx, dev, spec, false); err != nil {
			e.restoreGlobal(ctx, old)
			return nil, fmt.Errorf("update %s: %w", rec.Interface, err)
		}
	}

	node.PrivateKey, node.KeySource = key.String(), keySource
	node.ClusterCIDR, node.SliceCIDR, node.SliceExplicit = cluster.String(), newSlice.String(), explicit
	err = e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutNode(node); err != nil {
			return err
		}
		if old != nil && (old.nodeIP != nodeIP || newSlice != prevSlice) {
			if err := tx.DeleteAllocation(poolSlice, old.nodeIP.String()); err != nil {
				return err
			}
		}
		if err := tx.PutAllocation(store.Allocation{Pool: poolSlice, Addr: nodeIP.String(), Owner: ownerNode}); err != nil {
			return err
		}
		return tx.PutGlobal(rec)
	})
	if err != nil {
		if fresh {
			dev.Close()
		} else {
			e.restoreGlobal(ctx, old)
		}
		return nil, err
	}

	e.mu.Lock()
	if old != nil {
		delete(st.owners, allocKey(poolSlice, old.nodeIP))
	}
	st.owners[allocKey(poolSlice, nodeIP)] = ownerNode
	st.node = node
	st.key = key
	st.cluster, st.slice, st.slicePool = cluster, newSlice, pool
	st.global = &globalState{rec: rec, nodeIP: nodeIP, dev: dev}
	e.mu.Unlock()
	if fresh && old != nil && old.dev != nil {
		old.dev.Close()
	}
	e.log.Info("global overlay up", "interface", rec.Interface, "node_ip", nodeIP, "slice", newSlice,
		"slice_source", map[bool]string{true: "main daemon", false: "self-assigned"}[explicit],
		"public_key", key.PublicKey().String(), "port", r.WGPort)
	// Containers with join_global keep their links across a teardown, but
	// the kernel dropped their host routes with the node IP: put them back
	// now, not at the next reconcile.
	e.restoreHostRoutes()
	if exp := node.ExpectedPubkey; exp != "" && exp != key.PublicKey().String() {
		e.log.Warn("set_local_wg_pubkey gave a different key than the device's; peers will reject our handshakes until the keys agree",
			"expected", exp, "device", key.PublicKey().String())
	}
	e.topologyChanged()
	if r.NATEnabled {
		e.probeSoon()
	}
	return protocol.BridgeName{Name: rec.Interface}, nil
}

// buildSlicePool makes the address pool of slice: the node IP, every
// address still recorded in it, and every service subnet inside it carved
// out. Called with e.mu held.
func (e *Engine) buildSlicePool(slice netip.Prefix, nodeIP netip.Addr) (*ipam.Pool, error) {
	pool, err := ipam.NewPool(slice)
	if err != nil {
		return nil, err
	}
	for name, svc := range e.st.services {
		if slice.Contains(svc.subnet.Addr()) {
			if err := pool.Exclude(svc.subnet); err != nil {
				return nil, fmt.Errorf("service %s subnet %s inside slice %s: %w", name, svc.subnet, slice, err)
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
	e.mu.Lock()
	peers := e.st.peersOf(scopeGlobal)
	e.mu.Unlock()
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
		global: true,
	}
}

// restoreGlobal puts a device that a failed update touched back to its
// previous desired state (best effort: the failure is already reported).
func (e *Engine) restoreGlobal(ctx context.Context, old *globalState) {
	if old == nil || old.dev == nil {
		return
	}
	e.mu.Lock()
	key, cluster := e.st.key, e.st.cluster
	e.mu.Unlock()
	if err := e.syncDevice(ctx, old.dev, e.globalSpec(old.rec, key, cluster, old.nodeIP), false); err != nil {
		e.log.Error("could not restore the global device after a failed change; the next reconcile retries", "err", err)
	}
}

// teardownGlobal removes the global device. The node keeps its key and its
// slice (so a later setup gets the same identity and node IP) and the
// global peers are remembered as desired state, so a setup with the same
// cluster brings the mesh back without the main daemon re-adding them.
func (e *Engine) teardownGlobal(ctx context.Context) (protocol.Response, error) {
	e.global.Lock()
	defer e.global.Unlock()
	e.mu.Lock()
	old := e.st.global
	e.mu.Unlock()
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
	e.mu.Lock()
	e.st.global = nil
	delete(e.st.owners, allocKey(poolSlice, old.nodeIP))
	if e.st.slicePool != nil {
		e.st.slicePool.Release(old.nodeIP)
		// The node keeps its slice, and so its node IP: nothing else may
		// take it, or the next setup cannot have it back.
		e.st.slicePool.Reserve(old.nodeIP)
	}
	e.mu.Unlock()
	if old.dev != nil {
		if err := old.dev.Close(); err != nil {
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
	e.log.Info("global overlay torn down", "interface", old.rec.Interface)
	e.topologyChanged()
	return protocol.OK{}, nil
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

const scopeGlobal = "global"

func scopeService(name string) string { return "service:" + name }
