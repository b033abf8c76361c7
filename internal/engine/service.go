package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func (e *Engine) serviceBits(cluster netip.Prefix) int {
	if e.cfg.ServiceBits > 0 && cluster.Addr().Is4() == (e.cfg.ServiceBits <= 32) {
		return e.cfg.ServiceBits
	}
	return ipam.DefaultServiceBits(cluster)
}

// carveBits is the size of a service range carved out of the node slice:
// an eighth of the slice, so a node fits eight services before falling
// back to placement over the cluster, but never smaller than the reference's
// /28 (13 containers) nor larger than a /24 (v6: /120 and /104). A /24
// slice gives /27s: 29 containers per range; a service that fills its
// range grows by another.
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

// setupService creates or adopts a service overlay: its subnet, the bridge
// its containers attach to, and for dedicated mode its own WireGuard device.
// Steps: validate, place (reserving the subnet and port against setups
// running beside it), build the kernel side, commit, publish.
func (e *Engine) setupService(ctx context.Context, r protocol.SetupServiceOverlay) (protocol.Response, error) {
	mode, explicit, explicit2, err := parseServiceRequest(r)
	if err != nil {
		return nil, err
	}
	if e.cfg.Net == nil {
		return nil, errNoBackend
	}
	release, err := e.hold(ctx, serviceLock(r.Service))
	if err != nil {
		return nil, err
	}
	defer release()

	var existing *serviceState
	var g *globalState
	e.locked(func() { existing, g = e.st.services[r.Service], e.st.global })
	if existing != nil {
		return e.adoptService(existing, mode, explicit)
	}
	explicit, explicit2, adopted, err := e.chooseServiceSubnet(r.Service, mode, explicit, explicit2, g)
	if err != nil {
		return nil, err
	}
	svc, err := e.placeService(r.Service, mode, explicit, explicit2, g, adopted)
	if err != nil {
		return nil, err
	}
	e.at("service.placed")
	err = e.ensureService(svc)
	if err == nil {
		err = e.commitService(svc)
	}
	if err != nil {
		e.removeServiceKernel(svc)
		e.unplaceService(svc)
		return nil, err
	}
	e.log.Info("service overlay up", "service", r.Service, "mode", mode, "subnet", svc.subnet, "source", svc.rec.SubnetSource,
		"bridge", svc.rec.Bridge, "gateway", svc.gateway)
	e.topologyChanged()
	return serviceAnswer(svc), nil
}

// parseServiceRequest checks what a setup asks for before anything is locked or built.
func parseServiceRequest(r protocol.SetupServiceOverlay) (mode string, explicit, explicit2 netip.Prefix, err error) {
	if err := validName("service", r.Service); err != nil {
		return "", netip.Prefix{}, netip.Prefix{}, err
	}
	if mode, err = resolveMode(r.Mode); err != nil {
		return "", netip.Prefix{}, netip.Prefix{}, err
	}
	if explicit, explicit2, err = parseCIDRPair("subnet", r.Subnet); err != nil {
		return "", netip.Prefix{}, netip.Prefix{}, err
	}
	for _, p := range []netip.Prefix{explicit, explicit2} {
		if _, ok := ipam.FirstUsable(p); p.IsValid() && (!ok || p.Bits() >= p.Addr().BitLen()-1) {
			return "", netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet %s is too small for a gateway and containers", p)
		}
	}
	return mode, explicit, explicit2, nil
}

// chooseServiceSubnet settles which subnets a new service gets: the request's, in the
// cluster's family order, or the one a legacy dedicated service already had and the other
// nodes route to us. adopted is that legacy service when it is being taken over.
func (e *Engine) chooseServiceSubnet(service, mode string, explicit, explicit2 netip.Prefix, g *globalState) (netip.Prefix, netip.Prefix, *legacyDedicated, error) {
	if explicit.IsValid() {
		// The request's subnets go to the cluster's families in order.
		var first netip.Prefix
		e.locked(func() { first = e.st.cluster })
		if first.IsValid() && explicit.Addr().Is4() != first.Addr().Is4() {
			explicit, explicit2 = explicit2, explicit
		}
	}
	legacy, adopt := e.legacyDedicatedFor(service)
	adopt = adopt && mode == protocol.ModeDedicated
	if adopt && !explicit.IsValid() && g != nil && legacy.subnet.IsValid() && g.clusterContains(legacy.subnet) {
		// The other nodes route this subnet to us already.
		explicit = legacy.subnet
	}
	if g == nil && (mode == protocol.ModeDedicated || !explicit.IsValid()) {
		return netip.Prefix{}, netip.Prefix{}, nil, fmt.Errorf("no global overlay yet: call setup_global_overlay first (a shared service with an explicit subnet can come earlier)")
	}
	if !adopt {
		return explicit, explicit2, nil, nil
	}
	return explicit, explicit2, &legacy, nil
}

// commitService records a built service and its gateway addresses, first in the store and
// then in memory: nothing answers from a service a restart would not find.
func (e *Engine) commitService(svc *serviceState) error {
	gateways := []netip.Addr{svc.gateway}
	if svc.second != nil {
		gateways = append(gateways, svc.second.gateway)
	}
	pool := servicePool(svc.rec.Name)
	if err := e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutService(svc.rec); err != nil {
			return err
		}
		for _, gw := range gateways {
			if err := tx.PutAllocation(store.Allocation{Pool: pool, Addr: gw.String(), Owner: ownerGW}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	e.locked(func() {
		e.st.services[svc.rec.Name] = svc
		for _, gw := range gateways {
			e.st.owners[allocKey(pool, gw)] = ownerGW
		}
		e.unpendLocked(svc)
	})
	return nil
}

// adoptService answers a setup of a service that exists: the same mode and
// subnet are idempotent (the kernel is made to match, the live bridge and
// its members kept); anything else is refused.
func (e *Engine) adoptService(svc *serviceState, mode string, explicit netip.Prefix) (protocol.Response, error) {
	if svc.rec.Mode != mode {
		return nil, fmt.Errorf("service %s is set up in %s mode; tear it down before setting it up in %s mode", svc.rec.Name, svc.rec.Mode, mode)
	}
	if explicit.IsValid() && explicit != svc.subnet {
		return nil, fmt.Errorf("service %s already has subnet %s; tear it down before moving it to %s", svc.rec.Name, svc.subnet, explicit)
	}
	if err := e.ensureService(svc); err != nil {
		return nil, err
	}
	return serviceAnswer(svc), nil
}

// placeService picks the subnet (and for dedicated mode the key, port and
// device name) of a new service and reserves them until the setup is
// committed or undone (unplaceService), so setups running beside it never
// get an overlapping subnet or the same port.
func (e *Engine) placeService(name, mode string, explicit, explicit2 netip.Prefix, g *globalState, legacy *legacyDedicated) (svc *serviceState, err error) {
	var key wgtypes.Key
	switch {
	case legacy != nil:
		key = legacy.key
		e.log.Info("dedicated service adopted from the Rust overlayd: same key, port and subnet", "service", name, "public_key", key.PublicKey().String(), "port", legacy.port)
	case mode == protocol.ModeDedicated:
		k, err := wg.GenerateKey()
		if err != nil {
			return nil, err
		}
		key = k
	}
	e.locked(func() {
		if svc, err = e.placeSubnetLocked(name, mode, explicit); err != nil {
			return
		}
		if e.st.fam2 != nil {
			if err = e.placeSecondLocked(svc, explicit2); err != nil {
				e.unplaceLocked(svc)
				svc = nil
				return
			}
		}
		deployment := "zlayer"
		if g != nil {
			deployment = g.rec.Deployment
		}
		svc.rec.Bridge = ifName("b", deployment, name)
		if mode == protocol.ModeDedicated {
			port, perr := e.dedicatedPortLocked(g.rec.WGPort)
			if legacy != nil && legacy.port != 0 && e.portFreeLocked(legacy.port, g.rec.WGPort) {
				port, perr = legacy.port, nil
			}
			if perr != nil {
				e.unplaceLocked(svc)
				svc, err = nil, perr
				return
			}
			svc.key = key
			svc.rec.PrivateKey = svc.key.String()
			svc.rec.WGPort = port
			svc.rec.Interface = ifName("d", deployment, name)
			svc.rec.OverlayIP = svc.gateway.String()
			e.st.pendingPorts[port] = name
		}
	})
	return svc, err
}

// placeSubnetLocked picks the subnet of a new service: the main daemon's
// explicit subnet, else a range carved from the node slice, else the
// reference's FNV placement over the cluster CIDR; every choice avoids what
// this node already uses or is setting up. Called with e.mu held.
func (e *Engine) placeSubnetLocked(name, mode string, explicit netip.Prefix) (*serviceState, error) {
	st := e.st
	var subnet netip.Prefix
	source := "explicit"
	carved := false
	switch {
	case explicit.IsValid():
		subnet = explicit
		if err := e.overlapsServiceLocked(name, explicit); err != nil {
			return nil, err
		}
		if st.slice.IsValid() && st.slice.Overlaps(explicit) {
			if !st.slice.Contains(explicit.Addr()) || explicit.Bits() < st.slice.Bits() {
				return nil, fmt.Errorf("subnet %s partly overlaps the node slice %s; give a subnet inside or outside it", explicit, st.slice)
			}
			if err := st.slicePool.Exclude(explicit); err != nil {
				return nil, fmt.Errorf("subnet %s: %w", explicit, err)
			}
			carved = true
		}
	default:
		taken := st.takenPrefixes()
		if cb := e.carveBits(st.slice); st.slicePool != nil && st.slice.Bits() < cb {
			if p, err := st.slicePool.Carve(cb, withoutPrefix(taken, st.slice)); err == nil {
				subnet, source, carved = p, "slice", true
			}
		}
		if !subnet.IsValid() {
			bits := e.serviceBits(st.cluster)
			nodeKey := st.node.Identity
			if st.node.NodeID != 0 {
				nodeKey = strconv.FormatUint(st.node.NodeID, 10)
			}
			p, err := ipam.PlaceServiceSubnet(st.cluster, bits, name, nodeKey, taken)
			if err != nil {
				return nil, fmt.Errorf("place a /%d subnet for %s in %s: %w", bits, name, st.cluster, err)
			}
			subnet, source = p, "hash"
		}
	}
	r, err := newRange(subnet.String())
	if err == nil {
		err = r.pool.Reserve(r.gateway)
	}
	if err != nil {
		if carved {
			st.slicePool.Include(subnet)
		}
		return nil, err
	}
	st.pendingSubnets[name] = []netip.Prefix{subnet}
	return &serviceState{
		rec:     store.Service{Name: name, Mode: mode, Subnet: subnet.String(), SubnetSource: source, Gateway: r.gateway.String()},
		subnet:  subnet,
		gateway: r.gateway,
		pool:    r.pool,
	}, nil
}

// placeSecondLocked gives a new service of a dual-stack cluster its range
// in the second family: the explicit one, else one carved from the second
// node slice, else the FNV placement over the second cluster prefix. Called
// with e.mu held; the range is reserved with the service's first.
func (e *Engine) placeSecondLocked(svc *serviceState, explicit netip.Prefix) error {
	f := e.st.fam2
	subnet := explicit
	if explicit.IsValid() {
		if err := e.overlapsServiceLocked(svc.rec.Name, explicit); err != nil {
			return err
		}
		if f.slice.Overlaps(explicit) {
			if !f.slice.Contains(explicit.Addr()) || explicit.Bits() < f.slice.Bits() {
				return fmt.Errorf("subnet %s partly overlaps the node slice %s; give a subnet inside or outside it", explicit, f.slice)
			}
			if err := f.pool.Exclude(explicit); err != nil {
				return fmt.Errorf("subnet %s: %w", explicit, err)
			}
		}
	} else {
		taken := e.st.takenPrefixes()
		if cb := e.carveBits(f.slice); f.slice.Bits() < cb {
			if p, err := f.pool.Carve(cb, withoutPrefix(taken, f.slice)); err == nil {
				subnet = p
			}
		}
		if !subnet.IsValid() {
			bits := e.serviceBits(f.cluster)
			p, err := ipam.PlaceServiceSubnet(f.cluster, bits, svc.rec.Name, e.st.node.Identity, taken)
			if err != nil {
				return fmt.Errorf("place a /%d subnet for %s in %s: %w", bits, svc.rec.Name, f.cluster, err)
			}
			subnet = p
		}
	}
	r, err := newRange(subnet.String())
	if err == nil {
		err = r.pool.Reserve(r.gateway)
	}
	if err != nil {
		if e.carvedFromSliceLocked(subnet) {
			f.pool.Include(subnet)
		}
		return err
	}
	svc.second = &r
	svc.rec.Subnet2, svc.rec.Gateway2 = r.subnet.String(), r.gateway.String()
	e.st.pendingSubnets[svc.rec.Name] = append(e.st.pendingSubnets[svc.rec.Name], subnet)
	return nil
}

// overlapsServiceLocked refuses an explicit subnet that overlaps one of
// another service, committed, being set up or grown, or being given back.
// Those ranges are all out of the slice pool already, so its Exclude would
// not refuse them. Called with e.mu held.
func (e *Engine) overlapsServiceLocked(name string, p netip.Prefix) error {
	for other, svc := range e.st.services {
		for _, sub := range svc.allSubnets() {
			if sub.Overlaps(p) {
				return fmt.Errorf("subnet %s overlaps service %s's %s", p, other, sub)
			}
		}
	}
	for other, subs := range e.st.pendingSubnets {
		for _, sub := range subs {
			if other != name && sub.Overlaps(p) {
				return fmt.Errorf("subnet %s overlaps %s of service %s, which is being set up or grown", p, sub, other)
			}
		}
	}
	for sub, other := range e.st.returning {
		// The same service set up again takes its range back (a
		// redeploy); the return then leaves it out of the pool.
		if other != name && sub.Overlaps(p) {
			return fmt.Errorf("subnet %s overlaps %s, which torn-down service %s is still giving back to the node slice; retry once its containers' links are gone", p, sub, other)
		}
	}
	return nil
}

// carvedFromSliceLocked reports whether a service range was taken out of
// the pool of the node slice of its family (so giving it up puts it back).
func (e *Engine) carvedFromSliceLocked(p netip.Prefix) bool {
	slice, pool := e.st.slice, e.st.slicePool
	if f := e.st.fam2; f != nil && p.Addr().Is4() == f.slice.Addr().Is4() {
		slice, pool = f.slice, f.pool
	}
	return pool != nil && slice.Contains(p.Addr()) && p.Bits() >= slice.Bits()
}

// includeInSliceLocked gives a carved range back to its slice's pool.
// Addresses of the slice inside it that someone still holds (kept from a
// store an older version wrote, see loadAllocations) stay taken.
func (e *Engine) includeInSliceLocked(p netip.Prefix) {
	if !e.carvedFromSliceLocked(p) {
		return
	}
	pool, name := e.st.slicePool, poolSlice
	if f := e.st.fam2; f != nil && p.Addr().Is4() == f.slice.Addr().Is4() {
		pool, name = f.pool, poolSlice2
	}
	pool.Include(p)
	for k := range e.st.owners {
		if pname, addr, _ := cut(k); pname == name {
			if a, err := netip.ParseAddr(addr); err == nil && p.Contains(a) {
				_ = pool.AllocateSpecific(a)
			}
		}
	}
}

// unplaceService gives up what placeService reserved, after a setup failed.
func (e *Engine) unplaceService(svc *serviceState) { e.locked(func() { e.unplaceLocked(svc) }) }

func (e *Engine) unplaceLocked(svc *serviceState) {
	e.unpendLocked(svc)
	for _, sub := range svc.allSubnets() {
		e.includeInSliceLocked(sub)
	}
}

// unpendLocked ends the reservation of a service's placement: it is either
// committed now (then the state has it) or given up.
func (e *Engine) unpendLocked(svc *serviceState) {
	delete(e.st.pendingSubnets, svc.rec.Name)
	if svc.rec.WGPort != 0 && e.st.pendingPorts[svc.rec.WGPort] == svc.rec.Name {
		delete(e.st.pendingPorts, svc.rec.WGPort)
	}
}

// portFreeLocked reports whether no service (committed or being set up)
// and not the global device uses port. Called with e.mu held.
func (e *Engine) portFreeLocked(port, global uint16) bool {
	if port == global {
		return false
	}
	if _, pending := e.st.pendingPorts[port]; pending {
		return false
	}
	for _, svc := range e.st.services {
		if svc.rec.WGPort == port {
			return false
		}
	}
	return true
}

// dedicatedPortLocked picks the lowest free port of the band above the
// global port, avoiding those of services being set up. Called with e.mu
// held.
func (e *Engine) dedicatedPortLocked(base uint16) (uint16, error) {
	band := ipam.NewPortBand(base)
	for _, svc := range e.st.services {
		if svc.rec.WGPort != 0 {
			band.Reserve(svc.rec.WGPort)
		}
	}
	for port := range e.st.pendingPorts {
		band.Reserve(port)
	}
	return band.Allocate()
}

func serviceAnswer(svc *serviceState) protocol.ServiceOverlay {
	a := protocol.ServiceOverlay{Name: svc.rec.Bridge, Mode: svc.rec.Mode, Subnet: svc.subnet.String(), Gateway: svc.gateway}
	if svc.second != nil {
		a.Subnets = []string{svc.subnet.String(), svc.second.subnet.String()}
		a.Gateways = []netip.Addr{svc.gateway, svc.second.gateway}
	}
	if svc.dedicated() {
		a.Name = svc.rec.Interface
		a.WGPublicKey = svc.key.PublicKey().String()
		a.WGPort = svc.rec.WGPort
		a.OverlayIP = svc.gateway
	}
	return a
}

// bridgeSpec is a service's bridge: the gateway of every range on it.
func (e *Engine) bridgeSpec(svc *serviceState) linuxnet.BridgeSpec {
	spec := linuxnet.BridgeSpec{
		Name:    svc.rec.Bridge,
		Gateway: netip.PrefixFrom(svc.gateway, svc.subnet.Bits()),
		MTU:     e.cfg.MTU,
		Alias:   e.linkAlias("bridge", svc.rec.Name),
	}
	for _, r := range svc.allRanges()[1:] {
		spec.Extra = append(spec.Extra, netip.PrefixFrom(r.gateway, r.subnet.Bits()))
	}
	return spec
}

// ensureBridge creates or adopts a service's bridge and labels it. The
// kernel takes the label in a request of its own after the creation, and
// on a node taken over from the Rust daemon every reconcile pass deletes
// unlabelled zl-…-b bridges without ports (removeLegacyLinks): the sweep
// holds bridgeLabel for writing from its look at the links to its last
// deletion, so it sees a bridge of ours either labelled or not at all.
func (e *Engine) ensureBridge(spec linuxnet.BridgeSpec) error {
	e.bridgeLabel.RLock()
	defer e.bridgeLabel.RUnlock()
	return e.cfg.Net.EnsureBridge(spec)
}

// ensureService brings the kernel side of a service to its desired state:
// the bridge (created, or adopted with its members), and for a dedicated
// service its WireGuard device with its peers. The caller holds the
// service's lock.
func (e *Engine) ensureService(svc *serviceState) error {
	if !e.cfg.Caps.NoBridges {
		var spec linuxnet.BridgeSpec
		e.locked(func() { spec = e.bridgeSpec(svc) })
		if err := e.ensureBridge(spec); err != nil {
			return err
		}
	}
	if !svc.dedicated() {
		return nil
	}
	if svc.dev == nil {
		dev, err := e.openDevice(e.dedicatedSpec(svc))
		if err != nil {
			return fmt.Errorf("bring up dedicated device %s: %w", svc.rec.Interface, err)
		}
		e.locked(func() { svc.dev = dev })
		return nil
	}
	_, err := e.syncDevice(svc.dev, func() deviceSpec { return e.dedicatedSpec(svc) })
	return err
}

// dedicatedSpec is a service's own WireGuard device. It carries the
// gateway address as a /32 (/128): the subnet's route stays on the bridge,
// and the remote nodes' subnets are routed into the device from the
// service peers' allowed IPs.
func (e *Engine) dedicatedSpec(svc *serviceState) deviceSpec {
	var peers []store.Peer
	var subnets []netip.Prefix
	e.locked(func() { peers, subnets = e.st.peersOf(scopeService(svc.rec.Name)), svc.allSubnets() })
	own := []netip.Prefix{netip.PrefixFrom(svc.gateway, svc.gateway.BitLen())}
	if svc.second != nil {
		own = append(own, netip.PrefixFrom(svc.second.gateway, svc.second.gateway.BitLen()))
	}
	return deviceSpec{
		name:   svc.rec.Interface,
		key:    svc.key,
		port:   svc.rec.WGPort,
		addrs:  own,
		peers:  peers,
		routes: peerRoutes(peers, append(own, subnets...)),
	}
}

// growService gives a service whose ranges are full one more: a range
// carved from the node slice like its first, with its own gateway on the
// service's bridge. Only while the node slice has room, and never for a
// subnet the main daemon chose (it decides that service's size). The
// caller holds the service's lock; the answer of its request tells nothing
// new, and status lists the ranges.
func (e *Engine) growService(svc *serviceState) error {
	if svc.rec.SubnetSource == "explicit" {
		return ipam.ErrExhausted
	}
	var r svcRange
	var err error
	e.locked(func() {
		st := e.st
		bits := e.carveBits(st.slice)
		if st.slicePool == nil || st.slice.Bits() >= bits {
			err = ipam.ErrExhausted
			return
		}
		var p netip.Prefix
		if p, err = st.slicePool.Carve(bits, withoutPrefix(st.takenPrefixes(), st.slice)); err != nil {
			return
		}
		if r, err = newRange(p.String()); err == nil {
			err = r.pool.Reserve(r.gateway)
		}
		if err != nil {
			st.slicePool.Include(p)
			return
		}
		// Until the commit the range is in no record: an explicit setup
		// must find it taken.
		st.pendingSubnets[svc.rec.Name] = []netip.Prefix{p}
	})
	if err != nil {
		return err
	}
	e.at("service.grow")
	rec := svc.rec
	rec.Ranges = append(slices.Clone(rec.Ranges), r.subnet.String())
	grown := *svc
	grown.rec, grown.extra = rec, append(slices.Clone(svc.extra), r)
	undo := func() {
		e.locked(func() {
			delete(e.st.pendingSubnets, svc.rec.Name)
			e.st.slicePool.Include(r.subnet)
		})
		if !e.cfg.Caps.NoBridges {
			var spec linuxnet.BridgeSpec
			e.locked(func() { spec = e.bridgeSpec(svc) })
			e.ensureBridge(spec)
		}
	}
	if !e.cfg.Caps.NoBridges {
		var spec linuxnet.BridgeSpec
		e.locked(func() { spec = e.bridgeSpec(&grown) })
		if err := e.ensureBridge(spec); err != nil {
			undo()
			return fmt.Errorf("grow service %s by %s: %w", svc.rec.Name, r.subnet, err)
		}
	}
	if err := e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutService(rec); err != nil {
			return err
		}
		return tx.PutAllocation(store.Allocation{Pool: servicePool(rec.Name), Addr: r.gateway.String(), Owner: ownerGW})
	}); err != nil {
		undo()
		return err
	}
	e.locked(func() {
		svc.rec, svc.extra = rec, grown.extra
		e.st.owners[allocKey(servicePool(rec.Name), r.gateway)] = ownerGW
		delete(e.st.pendingSubnets, rec.Name)
	})
	e.log.Info("service grew by a range", "service", rec.Name, "range", r.subnet, "gateway", r.gateway, "ranges", len(grown.extra)+1)
	e.topologyChanged()
	return nil
}

// allocateIn hands out an address of a service, growing it by a range when
// its ranges are full. The caller holds the service's lock.
func (e *Engine) allocateIn(svc *serviceState) (netip.Addr, error) {
	var a netip.Addr
	var err error
	e.locked(func() { a, err = svc.Allocate() })
	if !errors.Is(err, ipam.ErrExhausted) {
		return a, err
	}
	if gerr := e.growService(svc); gerr != nil {
		if !errors.Is(gerr, ipam.ErrExhausted) {
			e.log.Warn("could not grow a full service", "service", svc.rec.Name, "err", gerr)
		}
		return netip.Addr{}, err
	}
	e.locked(func() { a, err = svc.Allocate() })
	return a, err
}

// removeServiceKernel deletes a service's bridge and device (best effort,
// for rollback and teardown).
func (e *Engine) removeServiceKernel(svc *serviceState) {
	if svc.dev != nil {
		if err := svc.dev.wg.Close(); err != nil {
			e.log.Warn("closing dedicated device", "device", svc.rec.Interface, "err", err)
		}
		e.locked(func() { svc.dev = nil })
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
// releases the subnet. Unknown services are fine. The ranges go back to the
// node slice only once every member's links are gone: until then those
// addresses are still configured in containers.
func (e *Engine) teardownService(ctx context.Context, r protocol.TeardownServiceOverlay) (protocol.Response, error) {
	if err := validName("service", r.Service); err != nil {
		return nil, err
	}
	svc, members, release, err := e.lockTeardown(ctx, r.Service)
	if err != nil {
		return nil, err
	}
	defer release()
	if svc == nil {
		return protocol.OK{}, nil
	}
	var gone []<-chan struct{}
	for _, a := range members {
		done, err := e.detachAttachment(ctx, a)
		if err != nil {
			return nil, fmt.Errorf("detach %s from %s: %w", a.Key, r.Service, err)
		}
		gone = append(gone, done)
	}
	if err := e.forgetService(svc); err != nil {
		return nil, err
	}
	e.removeServiceKernel(svc)
	e.returnRangesWhenGone(svc, gone)
	e.log.Info("service overlay torn down", "service", r.Service, "subnet", svc.subnet, "members_detached", len(members))
	e.topologyChanged()
	return protocol.OK{}, nil
}

// lockTeardown takes what a teardown of service needs and returns the
// service and its members under those locks: the service's lock, and for
// each VM guest among the members its peer's and claims' (a request giving
// a guest's address to another peer rewrites the guest's peer, and must
// not write it back once the teardown removed it). Which guests those are
// shows only in the members, read before the locks are taken, so they are
// read again after, and the locks taken again if they changed.
func (e *Engine) lockTeardown(ctx context.Context, service string) (*serviceState, []*store.Attachment, func(), error) {
	look := func() (svc *serviceState, members []*store.Attachment, keys []string) {
		keys = []string{serviceLock(service)}
		e.locked(func() {
			svc = e.st.services[service]
			for _, a := range e.st.attach {
				if a.Service == service {
					members = append(members, a)
					keys = append(keys, guestLocks(a)...)
				}
			}
		})
		slices.Sort(keys[1:])
		return svc, members, keys
	}
	for {
		_, _, keys := look()
		release, err := e.hold(ctx, keys...)
		if err != nil {
			return nil, nil, nil, err
		}
		svc, members, now := look()
		if slices.Equal(now, keys) {
			return svc, members, release, nil
		}
		release() // a guest came or went before we had the locks: look again
	}
}

// forgetService commits the removal of a service, its allocations and its
// peers, and drops it from the desired state. Its carved ranges pass to
// the returning set in the same step, so no setup finds them free before
// returnRangesWhenGone gives them back.
func (e *Engine) forgetService(svc *serviceState) error {
	name, scope := svc.rec.Name, scopeService(svc.rec.Name)
	var allocs []string
	var peers []store.Peer
	e.locked(func() {
		for k := range e.st.owners {
			if pool, addr, _ := cut(k); pool == servicePool(name) {
				allocs = append(allocs, addr)
			}
		}
		peers = e.st.peersOf(scope)
	})
	err := e.store.Update(func(tx *store.Tx) error {
		for _, a := range allocs {
			if err := tx.DeleteAllocation(servicePool(name), a); err != nil {
				return err
			}
		}
		for _, p := range peers {
			if err := tx.DeletePeer(scope, p.PublicKey); err != nil {
				return err
			}
		}
		return tx.DeleteService(name)
	})
	if err != nil {
		return err
	}
	e.locked(func() {
		delete(e.st.services, name)
		for _, sub := range svc.allSubnets() {
			if e.carvedFromSliceLocked(sub) {
				e.st.returning[sub] = name
			}
		}
		for _, a := range allocs {
			delete(e.st.owners, servicePool(name)+"|"+a)
		}
		for _, p := range peers {
			e.st.dropPeer(scope, p.PublicKey)
		}
	})
	return nil
}

// returnRangesWhenGone gives a torn-down service's carved ranges back to
// the node slice once every member's links are deleted (in the background:
// the kernel takes ~20 ms per veth, which the answer need not wait for).
func (e *Engine) returnRangesWhenGone(svc *serviceState, gone []<-chan struct{}) {
	e.goBackground(func() {
		for _, done := range gone {
			select {
			case <-done:
			case <-time.After(time.Minute):
				// A link that will not go must not keep its range out of the
				// pool forever; reconcile removes it.
				e.log.Warn("a container link of a torn-down service is still there after a minute", "service", svc.rec.Name)
			}
		}
		// Only the same service, set up again, can hold a returning range
		// now: other setups refuse it (overlapsServiceLocked) and carving
		// skips it.
		e.locked(func() {
			again := e.st.services[svc.rec.Name]
			for _, sub := range svc.allSubnets() {
				if _, ok := e.st.returning[sub]; !ok {
					continue
				}
				delete(e.st.returning, sub)
				if again == nil || !slices.ContainsFunc(again.allSubnets(), sub.Overlaps) {
					e.includeInSliceLocked(sub)
				}
			}
		})
	})
}

func cut(k string) (pool, addr string, ok bool) {
	for i := len(k) - 1; i >= 0; i-- {
		if k[i] == '|' {
			return k[:i], k[i+1:], true
		}
	}
	return "", "", false
}
