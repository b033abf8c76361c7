package engine

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

func (e *Engine) serviceBits(cluster netip.Prefix) int {
	if e.cfg.ServiceBits > 0 && cluster.Addr().Is4() == (e.cfg.ServiceBits <= 32) {
		return e.cfg.ServiceBits
	}
	return ipam.DefaultServiceBits(cluster)
}

// carveBits is the size of a service subnet carved out of the node slice:
// an eighth of the slice, so a node fits eight services before falling
// back to placement over the cluster, but never smaller than the reference's
// /28 (13 containers) nor larger than a /24 (v6: /120 and /104). A /24
// slice gives /27s: 29 containers per service per node.
func (e *Engine) carveBits(slice netip.Prefix) int {
	if e.cfg.ServiceBits > 0 && slice.Addr().Is4() == (e.cfg.ServiceBits <= 32) {
		return e.cfg.ServiceBits
	}
	smallest, largest := 28, 24
	if slice.Addr().Is6() {
		smallest, largest = 120, 104
	}
	return min(max(slice.Bits()+3, largest), smallest)
}

func resolveMode(mode string) (string, error) {
	switch mode {
	case protocol.ModeAuto, protocol.ModeShared:
		return protocol.ModeShared, nil
	case protocol.ModeDedicated:
		return protocol.ModeDedicated, nil
	}
	return "", fmt.Errorf("mode %q is not auto, shared or dedicated", truncate(mode))
}

func (e *Engine) serviceLock(name string) func() { return e.locks.lock("service:" + name) }

// setupService creates or adopts a service overlay: its subnet, the bridge
// its containers attach to, and for dedicated mode its own WireGuard device.
func (e *Engine) setupService(ctx context.Context, r protocol.SetupServiceOverlay) (protocol.Response, error) {
	if err := validName("service", r.Service); err != nil {
		return nil, err
	}
	mode, err := resolveMode(r.Mode)
	if err != nil {
		return nil, err
	}
	var explicit netip.Prefix
	if r.Subnet != "" {
		if explicit, err = parseCIDRField("subnet", r.Subnet); err != nil {
			return nil, err
		}
		if _, ok := ipam.FirstUsable(explicit); !ok || explicit.Bits() >= explicit.Addr().BitLen()-1 {
			return nil, fmt.Errorf("subnet %s is too small for a gateway and containers", explicit)
		}
	}
	if e.cfg.Net == nil {
		return nil, errNoBackend
	}

	e.global.RLock()
	defer e.global.RUnlock()
	unlock := e.serviceLock(r.Service)
	defer unlock()

	e.mu.Lock()
	st := e.st
	existing := st.services[r.Service]
	g := st.global
	e.mu.Unlock()

	if existing != nil {
		if existing.rec.Mode != mode {
			return nil, fmt.Errorf("service %s is set up in %s mode; tear it down before setting it up in %s mode", r.Service, existing.rec.Mode, mode)
		}
		if explicit.IsValid() && explicit != existing.subnet {
			return nil, fmt.Errorf("service %s already has subnet %s; tear it down before moving it to %s", r.Service, existing.subnet, explicit)
		}
		// Idempotent: make sure the kernel matches, keep the live bridge
		// and its members.
		if err := e.ensureService(ctx, existing); err != nil {
			return nil, err
		}
		return serviceAnswer(existing), nil
	}
	if g == nil && (mode == protocol.ModeDedicated || !explicit.IsValid()) {
		return nil, fmt.Errorf("no global overlay yet: call setup_global_overlay first (a shared service with an explicit subnet can come earlier)")
	}

	// Place the subnet and build its pool (pure, under the lock so two
	// services never get the same range).
	e.mu.Lock()
	svc, carved, err := e.placeService(r.Service, mode, explicit)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	release := func() {
		if carved {
			e.mu.Lock()
			st.slicePool.Include(svc.subnet)
			e.mu.Unlock()
		}
	}
	deployment := "zlayer"
	if g != nil {
		deployment = g.rec.Deployment
	}
	svc.rec.Bridge = ifName("b", deployment, r.Service)
	if mode == protocol.ModeDedicated {
		key, err := wg.GenerateKey()
		if err != nil {
			release()
			return nil, err
		}
		e.mu.Lock()
		port, err := e.dedicatedPortLocked(g.rec.WGPort)
		e.mu.Unlock()
		if err != nil {
			release()
			return nil, err
		}
		svc.key = key
		svc.rec.PrivateKey = key.String()
		svc.rec.WGPort = port
		svc.rec.Interface = ifName("d", deployment, r.Service)
		svc.rec.OverlayIP = svc.gateway.String()
	}
	if err := e.ensureService(ctx, svc); err != nil {
		e.removeServiceKernel(svc)
		release()
		return nil, err
	}
	err = e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutService(svc.rec); err != nil {
			return err
		}
		return tx.PutAllocation(store.Allocation{Pool: servicePool(r.Service), Addr: svc.gateway.String(), Owner: ownerGW})
	})
	if err != nil {
		e.removeServiceKernel(svc)
		release()
		return nil, err
	}
	e.mu.Lock()
	st.services[r.Service] = svc
	st.owners[allocKey(servicePool(r.Service), svc.gateway)] = ownerGW
	e.mu.Unlock()
	e.log.Info("service overlay up", "service", r.Service, "mode", mode, "subnet", svc.subnet, "source", svc.rec.SubnetSource,
		"bridge", svc.rec.Bridge, "gateway", svc.gateway)
	e.topologyChanged()
	return serviceAnswer(svc), nil
}

// placeService picks the subnet of a new service: the main daemon's
// explicit subnet, else a range carved from the node slice, else the
// reference's FNV placement over the cluster CIDR; every choice avoids
// what this node already uses. Called with e.mu held.
func (e *Engine) placeService(name, mode string, explicit netip.Prefix) (*serviceState, bool, error) {
	st := e.st
	taken := st.takenPrefixes()
	var subnet netip.Prefix
	source := "explicit"
	carved := false
	switch {
	case explicit.IsValid():
		subnet = explicit
		for other, svc := range st.services {
			if svc.subnet.Overlaps(explicit) {
				return nil, false, fmt.Errorf("subnet %s overlaps service %s's %s", explicit, other, svc.subnet)
			}
		}
		if st.slice.IsValid() && st.slice.Overlaps(explicit) {
			if !st.slice.Contains(explicit.Addr()) || explicit.Bits() < st.slice.Bits() {
				return nil, false, fmt.Errorf("subnet %s partly overlaps the node slice %s; give a subnet inside or outside it", explicit, st.slice)
			}
			if err := st.slicePool.Exclude(explicit); err != nil {
				return nil, false, fmt.Errorf("subnet %s: %w", explicit, err)
			}
			carved = true
		}
	default:
		bits := e.serviceBits(st.cluster)
		if cb := e.carveBits(st.slice); st.slicePool != nil && st.slice.Bits() < cb {
			if p, err := st.slicePool.Carve(cb, withoutPrefix(taken, st.slice)); err == nil {
				subnet, source, carved = p, "slice", true
			}
		}
		if !subnet.IsValid() {
			nodeKey := st.node.Identity
			if st.node.NodeID != 0 {
				nodeKey = strconv.FormatUint(st.node.NodeID, 10)
			}
			p, err := ipam.PlaceServiceSubnet(st.cluster, bits, name, nodeKey, taken)
			if err != nil {
				return nil, false, fmt.Errorf("place a /%d subnet for %s in %s: %w", bits, name, st.cluster, err)
			}
			subnet, source = p, "hash"
		}
	}
	gw, ok := ipam.FirstUsable(subnet)
	if !ok {
		return nil, false, fmt.Errorf("subnet %s has no usable address", subnet)
	}
	pool, err := ipam.NewPool(subnet)
	if err == nil {
		err = pool.Reserve(gw)
	}
	if err != nil {
		if carved {
			st.slicePool.Include(subnet)
		}
		return nil, false, err
	}
	return &serviceState{
		rec:     store.Service{Name: name, Mode: mode, Subnet: subnet.String(), SubnetSource: source, Gateway: gw.String()},
		subnet:  subnet,
		gateway: gw,
		pool:    pool,
	}, carved, nil
}

// dedicatedPortLocked picks the lowest free port of the band above the
// global port. Called with e.mu held.
func (e *Engine) dedicatedPortLocked(base uint16) (uint16, error) {
	band := ipam.NewPortBand(base)
	for _, svc := range e.st.services {
		if svc.rec.WGPort != 0 {
			band.Reserve(svc.rec.WGPort)
		}
	}
	return band.Allocate()
}

func serviceAnswer(svc *serviceState) protocol.ServiceOverlay {
	a := protocol.ServiceOverlay{Name: svc.rec.Bridge, Mode: svc.rec.Mode, Subnet: svc.subnet.String(), Gateway: svc.gateway}
	if svc.dedicated() {
		a.Name = svc.rec.Interface
		a.WGPublicKey = svc.key.PublicKey().String()
		a.WGPort = svc.rec.WGPort
		a.OverlayIP = svc.gateway
	}
	return a
}

// ensureService brings the kernel side of a service to its desired state:
// the bridge (created, or adopted with its members), and for a dedicated
// service its WireGuard device with its peers.
func (e *Engine) ensureService(ctx context.Context, svc *serviceState) error {
	if !e.cfg.Caps.NoBridges {
		err := e.cfg.Net.EnsureBridge(linuxnet.BridgeSpec{
			Name:    svc.rec.Bridge,
			Gateway: netip.PrefixFrom(svc.gateway, svc.subnet.Bits()),
			MTU:     e.cfg.MTU,
			Alias:   e.linkAlias("bridge", svc.rec.Name),
		})
		if err != nil {
			return err
		}
	}
	if !svc.dedicated() {
		return nil
	}
	spec := e.dedicatedSpec(svc)
	if svc.dev == nil {
		dev, err := e.openDevice(ctx, spec)
		if err != nil {
			return fmt.Errorf("bring up dedicated device %s: %w", svc.rec.Interface, err)
		}
		e.mu.Lock()
		svc.dev = dev
		e.mu.Unlock()
		return nil
	}
	return e.syncDevice(ctx, svc.dev, spec, false)
}

// dedicatedSpec is a service's own WireGuard device. It carries the
// gateway address as a /32 (/128): the subnet's route stays on the bridge,
// and the remote nodes' subnets are routed into the device from the
// service peers' allowed IPs.
func (e *Engine) dedicatedSpec(svc *serviceState) deviceSpec {
	e.mu.Lock()
	peers := e.st.peersOf(scopeService(svc.rec.Name))
	e.mu.Unlock()
	own := netip.PrefixFrom(svc.gateway, svc.gateway.BitLen())
	return deviceSpec{
		name:   svc.rec.Interface,
		key:    svc.key,
		port:   svc.rec.WGPort,
		addrs:  []netip.Prefix{own},
		peers:  peers,
		routes: peerRoutes(peers, []netip.Prefix{own, svc.subnet}),
	}
}

// removeServiceKernel deletes a service's bridge and device (best effort,
// for rollback and teardown).
func (e *Engine) removeServiceKernel(svc *serviceState) {
	if svc.dev != nil {
		if err := svc.dev.Close(); err != nil {
			e.log.Warn("closing dedicated device", "device", svc.rec.Interface, "err", err)
		}
		svc.dev = nil
	}
	if svc.rec.Interface != "" {
		if err := e.cfg.Net.DeleteLink(svc.rec.Interface); err != nil {
			e.log.Warn("deleting dedicated device", "device", svc.rec.Interface, "err", err)
		}
	}
	if svc.rec.Bridge != "" && !e.cfg.Caps.NoBridges {
		if err := e.cfg.Net.DeleteLink(svc.rec.Bridge); err != nil {
			e.log.Warn("deleting bridge", "bridge", svc.rec.Bridge, "err", err)
		}
	}
}

// teardownService detaches every member, deletes the bridge and device and
// releases the subnet. Unknown services are fine.
func (e *Engine) teardownService(ctx context.Context, r protocol.TeardownServiceOverlay) (protocol.Response, error) {
	if err := validName("service", r.Service); err != nil {
		return nil, err
	}
	e.global.RLock()
	defer e.global.RUnlock()
	unlock := e.serviceLock(r.Service)
	defer unlock()

	e.mu.Lock()
	svc := e.st.services[r.Service]
	var members []*store.Attachment
	for _, a := range e.st.attach {
		if a.Service == r.Service {
			members = append(members, a)
		}
	}
	e.mu.Unlock()
	if svc == nil {
		return protocol.OK{}, nil
	}
	for _, a := range members {
		if err := e.detachAttachment(ctx, a); err != nil {
			return nil, fmt.Errorf("detach %s from %s: %w", a.Key, r.Service, err)
		}
	}
	scope := scopeService(r.Service)
	e.mu.Lock()
	var allocs []string
	for k := range e.st.owners {
		if pool, addr, _ := cut(k); pool == servicePool(r.Service) {
			allocs = append(allocs, addr)
		}
	}
	peers := e.st.peersOf(scope)
	e.mu.Unlock()
	err := e.store.Update(func(tx *store.Tx) error {
		for _, a := range allocs {
			if err := tx.DeleteAllocation(servicePool(r.Service), a); err != nil {
				return err
			}
		}
		for _, p := range peers {
			if err := tx.DeletePeer(scope, p.PublicKey); err != nil {
				return err
			}
		}
		return tx.DeleteService(r.Service)
	})
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	delete(e.st.services, r.Service)
	for _, a := range allocs {
		delete(e.st.owners, servicePool(r.Service)+"|"+a)
	}
	for _, p := range peers {
		delete(e.st.peers, peerKey(scope, p.PublicKey))
	}
	if e.st.slicePool != nil && e.st.slice.Contains(svc.subnet.Addr()) {
		e.st.slicePool.Include(svc.subnet)
	}
	e.mu.Unlock()
	e.removeServiceKernel(svc)
	e.log.Info("service overlay torn down", "service", r.Service, "subnet", svc.subnet, "members_detached", len(members))
	e.topologyChanged()
	return protocol.OK{}, nil
}

func cut(k string) (pool, addr string, ok bool) {
	for i := len(k) - 1; i >= 0; i-- {
		if k[i] == '|' {
			return k[:i], k[i+1:], true
		}
	}
	return "", "", false
}

// errNoDedicated is the reference's exact message (its tests pin it).
func errNoDedicated(service string) error {
	return errUnprefixed{"no dedicated overlay for service " + service}
}

var errGlobalNotSetUp = errUnprefixed{"global overlay not set up; call setup_global_overlay first"}

// lockDevice takes the locks every peer operation of a scope needs (the
// global overlay's read lock, and the service's lock for a service scope)
// and returns the scope's device with them held; release lets them go. On
// an error nothing stays locked.
func (e *Engine) lockDevice(ps protocol.PeerScope) (dev wg.Device, scope string, release func(), err error) {
	e.global.RLock()
	unlockService := func() {}
	if !ps.IsGlobal() {
		unlockService = e.serviceLock(ps.Service)
	}
	release = func() {
		unlockService()
		e.global.RUnlock()
	}
	dev, scope, err = e.deviceFor(ps)
	if err != nil {
		release()
		return nil, "", nil, err
	}
	return dev, scope, release, nil
}

// deviceFor finds the WireGuard device of a peer scope.
func (e *Engine) deviceFor(scope protocol.PeerScope) (wg.Device, string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if scope.IsGlobal() {
		if e.st.global == nil || e.st.global.dev == nil {
			return nil, "", errGlobalNotSetUp
		}
		return e.st.global.dev, scopeGlobal, nil
	}
	svc := e.st.services[scope.Service]
	if svc == nil || !svc.dedicated() || svc.dev == nil {
		return nil, "", errNoDedicated(scope.Service)
	}
	return svc.dev, scopeService(scope.Service), nil
}
