package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func handleKey(h protocol.AttachHandle) string {
	switch h.Platform {
	case protocol.PlatformLinuxPID:
		return fmt.Sprintf("%s:%d", h.Platform, h.PID)
	case protocol.PlatformGuestManaged:
		return h.Platform + ":" + h.ID
	}
	return h.Platform + ":" + h.ContainerID
}

func (e *Engine) attach(ctx context.Context, r protocol.AttachContainer) (protocol.Response, error) {
	if err := validName("service", r.Service); err != nil {
		return nil, err
	}
	if r.DNSDomain != "" && !validHostname(r.DNSDomain) {
		return nil, fmt.Errorf("dns_domain %q is not a domain name", truncate(r.DNSDomain))
	}
	e.noteDNSDomain(r.DNSDomain)
	switch r.Handle.Platform {
	case protocol.PlatformLinuxPID:
		return e.attachLinux(ctx, r)
	case protocol.PlatformGuestManaged:
		return e.attachGuest(ctx, r)
	case protocol.PlatformWindowsContainer:
		if e.cfg.HCN == nil {
			return nil, fmt.Errorf("windows_container handles are for Windows nodes; this daemon runs on %s (use linux_pid)", runtime.GOOS)
		}
		return e.attachWindows(ctx, r)
	}
	return nil, fmt.Errorf("unknown handle platform %q", r.Handle.Platform)
}

// procIdentity is what tells a process apart from a later one that got the
// same PID.
type procIdentity struct{ start, netns uint64 }

func (e *Engine) identify(pid uint32) (procIdentity, error) {
	start, err := e.cfg.Procs.StartTime(int(pid))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return procIdentity{}, fmt.Errorf("process %d does not exist (has the container exited?)", pid)
		}
		return procIdentity{}, fmt.Errorf("process %d: %w", pid, err)
	}
	ns, err := e.cfg.Procs.NetnsInode(int(pid))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return procIdentity{}, fmt.Errorf("process %d does not exist (has the container exited?)", pid)
		}
		return procIdentity{}, fmt.Errorf("network namespace of process %d: %w", pid, err)
	}
	return procIdentity{start, ns}, nil
}

// attachLinux wires a container process into a service: eth0 on the
// service bridge, and with join_global eth1 on the node slice routed over
// the global overlay. Every step is undone if a later one fails.
func (e *Engine) attachLinux(ctx context.Context, r protocol.AttachContainer) (protocol.Response, error) {
	pid := r.Handle.PID
	if pid == 0 || pid > maxPID {
		return nil, fmt.Errorf("pid %d is not a Linux process id (1-%d)", pid, maxPID)
	}
	if e.cfg.Caps.NoBridges {
		return nil, fmt.Errorf("linux_pid attaches need Linux network namespaces; this daemon runs on %s (use guest_managed for VM guests)", e.cfg.Caps.Platform)
	}
	if e.cfg.Net == nil {
		return nil, errNoBackend
	}
	key := handleKey(r.Handle)
	e.global.RLock()
	defer e.global.RUnlock()
	unlock := e.locks.lock("service:"+r.Service, "handle:"+key)
	defer unlock()

	id, err := e.identify(pid)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	svc := e.st.services[r.Service]
	existing := e.st.attach[key]
	e.mu.Unlock()
	if svc == nil {
		return nil, fmt.Errorf("service %s has no overlay on this node; call setup_service_overlay first", r.Service)
	}
	if existing != nil {
		switch {
		case existing.StartTime != id.start || existing.NetnsInode != id.netns:
			// The PID was recycled: the old container is gone.
			e.log.Info("replacing the attachment of a process that no longer exists", "handle", key)
			if err := e.forgetAttachment(ctx, existing); err != nil {
				return nil, err
			}
		case existing.Service != r.Service:
			return nil, fmt.Errorf("%s is attached to service %s; detach it first", key, existing.Service)
		case (existing.GlobalIP != "") != (r.JoinGlobal && e.globalUp()):
			return nil, fmt.Errorf("%s is already attached to %s with join_global=%t; detach it to change that", key, r.Service, existing.GlobalIP != "")
		default:
			// Idempotent: same process, same service. Repair the links if
			// something removed them, keep the addresses.
			if err := e.wireContainer(ctx, existing, svc); err != nil {
				return nil, err
			}
			return e.attachedAnswer(existing, r), nil
		}
	}

	e.mu.Lock()
	ip, err := svc.pool.Allocate()
	if err != nil {
		e.mu.Unlock()
		return nil, exhausted(err, svc.subnet, servicePool(r.Service))
	}
	var gip netip.Addr
	if r.JoinGlobal && e.st.global != nil && e.st.slicePool != nil {
		if gip, err = e.st.slicePool.Allocate(); err != nil {
			svc.pool.Release(ip)
			e.mu.Unlock()
			return nil, exhausted(err, e.st.slice, poolSlice)
		}
	}
	e.mu.Unlock()
	releaseIPs := func() {
		e.mu.Lock()
		svc.pool.Release(ip)
		if gip.IsValid() {
			e.st.slicePool.Release(gip)
		}
		e.mu.Unlock()
	}

	rec := &store.Attachment{
		Key:         key,
		Platform:    r.Handle.Platform,
		PID:         pid,
		Service:     r.Service,
		IP:          ip.String(),
		HostLink:    vethName(pid, 0),
		NetnsInode:  id.netns,
		StartTime:   id.start,
		CreatedUnix: time.Now().Unix(),
	}
	if r.DNSServer.IsValid() {
		rec.DNSServer = r.DNSServer.String()
	}
	rec.DNSDomain = r.DNSDomain
	if gip.IsValid() {
		rec.GlobalIP = gip.String()
		rec.HostLinkGlobal = vethName(pid, 1)
	}
	if err := e.wireContainer(ctx, rec, svc); err != nil {
		releaseIPs()
		return nil, err
	}
	// The process may have exited while we worked: then its namespace is
	// gone and what we built is already half torn down by the kernel.
	if now, err := e.identify(pid); err != nil || now != id {
		e.unwireContainer(rec)
		releaseIPs()
		return nil, fmt.Errorf("process %d exited during the attach; nothing was kept", pid)
	}
	err = e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutAllocation(store.Allocation{Pool: servicePool(r.Service), Addr: rec.IP, Owner: attachOwner + key}); err != nil {
			return err
		}
		if gip.IsValid() {
			if err := tx.PutAllocation(store.Allocation{Pool: poolSlice, Addr: rec.GlobalIP, Owner: attachOwner + key}); err != nil {
				return err
			}
		}
		return tx.PutAttachment(*rec)
	})
	if err != nil {
		e.unwireContainer(rec)
		releaseIPs()
		return nil, err
	}
	e.mu.Lock()
	e.st.attach[key] = rec
	e.st.owners[allocKey(servicePool(r.Service), ip)] = attachOwner + key
	if gip.IsValid() {
		e.st.owners[allocKey(poolSlice, gip)] = attachOwner + key
	}
	e.mu.Unlock()
	e.log.Debug("attached", "handle", key, "service", r.Service, "ip", ip, "global_ip", gip)
	return e.attachedAnswer(rec, r), nil
}

func (e *Engine) globalUp() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.global != nil
}

// attachedAnswer is the attached result, with the resolver the container
// should use.
func (e *Engine) attachedAnswer(a *store.Attachment, r protocol.AttachContainer) protocol.Attached {
	ans := protocol.Attached{IP: netip.MustParseAddr(a.IP)}
	if a.GlobalIP != "" {
		ans.GlobalIP = netip.MustParseAddr(a.GlobalIP)
	}
	ans.DNSServer, ans.DNSDomain = e.containerDNS(a.Service, false, r.DNSServer, r.DNSDomain)
	return ans
}

// wireContainer builds (or repairs) the links of an attachment: eth0 on the
// service bridge with a default route via the gateway; eth1 with a node-slice
// address, the cluster CIDR routed via the node IP. On error nothing of it
// is left.
func (e *Engine) wireContainer(ctx context.Context, a *store.Attachment, svc *serviceState) error {
	e.waitDetached(ctx, a.HostLink)
	ip, err := netip.ParseAddr(a.IP)
	if err != nil {
		return err
	}
	alias := e.linkAlias("veth", a.Key)
	err = e.cfg.Net.Attach(linuxnet.AttachSpec{
		PID:       int(a.PID),
		HostName:  a.HostLink,
		IfName:    "eth0",
		Addr:      netip.PrefixFrom(ip, svc.subnet.Bits()),
		MTU:       e.cfg.MTU,
		Bridge:    svc.rec.Bridge,
		Gateway:   svc.gateway,
		HostAlias: alias,
	})
	if err != nil {
		return err
	}
	if a.GlobalIP == "" {
		return nil
	}
	e.waitDetached(ctx, a.HostLinkGlobal)
	gip, err := netip.ParseAddr(a.GlobalIP)
	if err != nil {
		return err
	}
	e.mu.Lock()
	var nodeIP netip.Addr
	var cluster netip.Prefix
	if g := e.st.global; g != nil {
		nodeIP, cluster = g.nodeIP, e.st.cluster
	}
	e.mu.Unlock()
	if !nodeIP.IsValid() {
		e.cfg.Net.Detach(a.HostLink)
		return errors.New("join_global needs the global overlay, which is not set up")
	}
	err = e.cfg.Net.Attach(linuxnet.AttachSpec{
		PID:      int(a.PID),
		HostName: a.HostLinkGlobal,
		IfName:   "eth1",
		Addr:     netip.PrefixFrom(gip, gip.BitLen()),
		MTU:      e.cfg.MTU,
		// No preferred source on the host route: the kernel flushes routes
		// whose source address disappears, and the node IP disappears with
		// a userspace device whenever the daemon restarts.
		HostRoute: true,
		Routes:    []linuxnet.ContainerRoute{{Dst: cluster, Via: nodeIP, OnLink: true}},
		HostAlias: alias,
	})
	if err != nil {
		if derr := e.cfg.Net.Detach(a.HostLink); derr != nil {
			e.log.Warn("rollback of eth0 failed; reconcile removes it", "link", a.HostLink, "err", derr)
		}
		return fmt.Errorf("eth1: %w", err)
	}
	return nil
}

// unwireContainer deletes an attachment's links now (rollback path).
func (e *Engine) unwireContainer(a *store.Attachment) {
	for _, l := range []string{a.HostLink, a.HostLinkGlobal} {
		if l == "" {
			continue
		}
		if err := e.cfg.Net.Detach(l); err != nil {
			e.log.Warn("removing container link failed; reconcile retries", "link", l, "err", err)
		}
	}
}

func (e *Engine) detach(ctx context.Context, r protocol.DetachContainer) (protocol.Response, error) {
	switch r.Handle.Platform {
	case protocol.PlatformWindowsContainer:
		if e.cfg.HCN == nil {
			// Nothing of a Windows container can exist on this platform.
			return protocol.OK{}, nil
		}
	case protocol.PlatformLinuxPID, protocol.PlatformGuestManaged:
	default:
		return nil, fmt.Errorf("unknown handle platform %q", r.Handle.Platform)
	}
	key := handleKey(r.Handle)
	e.global.RLock()
	defer e.global.RUnlock()
	e.mu.Lock()
	a := e.st.attach[key]
	e.mu.Unlock()
	if a == nil {
		return protocol.OK{}, nil
	}
	if a.Platform == protocol.PlatformWindowsContainer {
		key = "windows:" + r.Handle.ContainerID
	}
	unlock := e.locks.lock("service:"+a.Service, "handle:"+key)
	defer unlock()
	e.mu.Lock()
	a = e.st.attach[handleKey(r.Handle)]
	e.mu.Unlock()
	if a == nil {
		return protocol.OK{}, nil
	}
	if err := e.detachAttachment(ctx, a); err != nil {
		return nil, err
	}
	return protocol.OK{}, nil
}

// detachAttachment forgets an attachment and removes its kernel side. The
// caller holds the service and handle locks.
func (e *Engine) detachAttachment(ctx context.Context, a *store.Attachment) error {
	switch a.Platform {
	case protocol.PlatformGuestManaged:
		return e.detachGuest(ctx, a)
	case protocol.PlatformWindowsContainer:
		return e.detachWindows(ctx, a)
	}
	return e.forgetAttachment(ctx, a)
}

// forgetAttachment commits the removal of a container attachment, then
// deletes its links in the background: the kernel answers a link deletion
// only after an RCU grace period (~20 ms), which the caller need not wait
// for. The addresses return to their pools only once the links are gone,
// so they are never handed out while still configured; if we crash in
// between, the start-up reconcile deletes the links (ours by their alias,
// wanted by nobody) before the first request.
func (e *Engine) forgetAttachment(ctx context.Context, a *store.Attachment) error {
	svcPool := servicePool(a.Service)
	err := e.store.Update(func(tx *store.Tx) error {
		if err := tx.DeleteAllocation(svcPool, a.IP); err != nil {
			return err
		}
		if a.GlobalIP != "" {
			if err := tx.DeleteAllocation(poolSlice, a.GlobalIP); err != nil {
				return err
			}
		}
		return tx.DeleteAttachment(a.Key)
	})
	if err != nil {
		return err
	}
	ip, _ := netip.ParseAddr(a.IP)
	gip, _ := netip.ParseAddr(a.GlobalIP)
	e.mu.Lock()
	delete(e.st.attach, a.Key)
	delete(e.st.owners, allocKey(svcPool, ip))
	if gip.IsValid() {
		delete(e.st.owners, allocKey(poolSlice, gip))
	}
	svcPoolRef := e.st.pool(svcPool)
	slicePoolRef := e.st.slicePool
	e.mu.Unlock()

	links := []string{a.HostLink}
	if a.HostLinkGlobal != "" {
		links = append(links, a.HostLinkGlobal)
	}
	done := make(chan struct{})
	for _, l := range links {
		e.detaching.Store(l, done)
	}
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		defer close(done)
		for _, l := range links {
			if e.cfg.Net != nil {
				if err := e.cfg.Net.Detach(l); err != nil {
					e.log.Warn("removing container link failed; reconcile retries", "link", l, "err", err)
				}
			}
			e.detaching.CompareAndDelete(l, done)
		}
		e.mu.Lock()
		releaseIfFree(svcPoolRef, ip)
		releaseIfFree(slicePoolRef, gip)
		e.mu.Unlock()
	}()
	return nil
}

// releaseIfFree returns an address to its pool unless the pool was
// replaced meanwhile (a service torn down and set up again).
func releaseIfFree(p *ipam.Pool, a netip.Addr) {
	if p != nil && a.IsValid() && p.IsAllocated(a) {
		p.Release(a)
	}
}

// waitDetached waits until a background deletion of link name finished, so
// a re-attach of the same PID never races the old link.
func (e *Engine) waitDetached(ctx context.Context, name string) {
	if name == "" {
		return
	}
	if v, ok := e.detaching.Load(name); ok {
		select {
		case <-v.(chan struct{}):
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
	}
}

// attachGuest registers a VM guest that runs its own WireGuard: an address
// from the node slice (routed into the global device, not onto a bridge), a
// fresh keypair, and the guest as a global peer.
func (e *Engine) attachGuest(ctx context.Context, r protocol.AttachContainer) (protocol.Response, error) {
	if err := validName("guest id", r.Handle.ID); err != nil {
		return nil, err
	}
	key := handleKey(r.Handle)
	e.global.RLock()
	defer e.global.RUnlock()
	unlock := e.locks.lock("service:"+r.Service, "handle:"+key)
	defer unlock()

	e.mu.Lock()
	g := e.st.global
	existing := e.st.attach[key]
	nodeKey := e.st.key
	cluster := e.st.cluster
	e.mu.Unlock()
	if g == nil || g.dev == nil {
		return nil, errUnprefixed{"guest-managed attach requires the global overlay to be set up first (call setup_global_overlay)"}
	}
	var keep netip.Addr
	if existing != nil {
		// A repeated attach rotates the guest's key but keeps its address.
		keep, _ = netip.ParseAddr(existing.IP)
		if err := e.detachGuest(ctx, existing); err != nil {
			return nil, err
		}
	}
	guestKey, err := wg.GenerateKey()
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	var ip netip.Addr
	if keep.IsValid() && e.st.slicePool.AllocateSpecific(keep) == nil {
		ip = keep
	} else {
		// First attach, or another request took the address meanwhile.
		ip, err = e.st.slicePool.Allocate()
	}
	slice := e.st.slice
	e.mu.Unlock()
	if err != nil {
		return nil, exhausted(err, slice, poolSlice)
	}
	peer := store.Peer{
		Scope:      scopeGlobal,
		PublicKey:  guestKey.PublicKey().String(),
		AllowedIPs: []string{netip.PrefixFrom(ip, ip.BitLen()).String()},
		Guest:      true,
	}
	pc, err := e.peerConfig(ctx, peer, false)
	if err == nil {
		err = g.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{pc}})
	}
	if err != nil {
		e.mu.Lock()
		e.st.slicePool.Release(ip)
		e.mu.Unlock()
		return nil, fmt.Errorf("register the guest on %s: %w", g.rec.Interface, err)
	}
	rec := &store.Attachment{
		Key: key, Platform: r.Handle.Platform, GuestID: r.Handle.ID, Service: r.Service, IP: ip.String(),
		GuestPubkey: peer.PublicKey, DNSDomain: r.DNSDomain, CreatedUnix: time.Now().Unix(),
	}
	if r.DNSServer.IsValid() {
		rec.DNSServer = r.DNSServer.String()
	}
	err = e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutAllocation(store.Allocation{Pool: poolSlice, Addr: rec.IP, Owner: guestOwner + r.Handle.ID}); err != nil {
			return err
		}
		if err := tx.PutPeer(peer); err != nil {
			return err
		}
		return tx.PutAttachment(*rec)
	})
	if err != nil {
		g.dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: pc.PublicKey, Remove: true}}})
		e.mu.Lock()
		e.st.slicePool.Release(ip)
		e.mu.Unlock()
		return nil, err
	}
	e.mu.Lock()
	e.st.attach[key] = rec
	e.st.owners[allocKey(poolSlice, ip)] = guestOwner + r.Handle.ID
	p := peer
	e.st.peers[peerKey(scopeGlobal, peer.PublicKey)] = &p
	e.mu.Unlock()
	dnsServer, dnsDomain := e.containerDNS(r.Service, true, r.DNSServer, r.DNSDomain)
	return protocol.GuestConfig{
		OverlayIP:  ip,
		PrefixLen:  uint8(cluster.Bits()),
		PrivateKey: guestKey.String(),
		PublicKey:  peer.PublicKey,
		ListenPort: g.rec.WGPort,
		Peers: []protocol.PeerSpec{{
			PublicKey:               nodeKey.PublicKey().String(),
			Endpoint:                netip.AddrPortFrom(g.nodeIP, g.rec.WGPort).String(),
			AllowedIPs:              cluster.String(),
			PersistentKeepaliveSecs: 25,
		}},
		DNSServer: dnsServer,
		DNSDomain: dnsDomain,
	}, nil
}

// detachGuest removes a guest's peer and releases its address.
func (e *Engine) detachGuest(ctx context.Context, a *store.Attachment) error {
	ip, _ := netip.ParseAddr(a.IP)
	err := e.store.Update(func(tx *store.Tx) error {
		if err := tx.DeleteAllocation(poolSlice, a.IP); err != nil {
			return err
		}
		if err := tx.DeletePeer(scopeGlobal, a.GuestPubkey); err != nil {
			return err
		}
		return tx.DeleteAttachment(a.Key)
	})
	if err != nil {
		return err
	}
	e.mu.Lock()
	delete(e.st.attach, a.Key)
	delete(e.st.owners, allocKey(poolSlice, ip))
	delete(e.st.peers, peerKey(scopeGlobal, a.GuestPubkey))
	releaseIfFree(e.st.slicePool, ip)
	var dev wg.Device
	if e.st.global != nil {
		dev = e.st.global.dev
	}
	e.mu.Unlock()
	if dev != nil {
		if k, err := wg.ParseKey(a.GuestPubkey); err == nil {
			if err := dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: k, Remove: true}}}); err != nil {
				e.log.Warn("removing guest peer failed; reconcile retries", "guest", a.GuestID, "err", err)
			}
		}
	}
	return nil
}

// containerDNS is the resolver a container or guest of service should use:
// what the main daemon sent (it may run its own DNS server, and its VM
// guests relay to a port only it serves), and for what it left out, our DNS
// server when one serves that container.
func (e *Engine) containerDNS(service string, guest bool, reqServer netip.Addr, reqDomain string) (netip.Addr, string) {
	server, domain := reqServer, strings.TrimSuffix(reqDomain, ".")
	if server.IsValid() && domain != "" {
		return server, domain
	}
	s, d := e.dnsZone(service, guest)
	if !server.IsValid() {
		server = s
	}
	if domain == "" {
		domain = d
	}
	return server, domain
}
