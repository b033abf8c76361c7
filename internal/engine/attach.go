package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

func handleKey(h protocol.AttachHandle) string {
	switch h.Platform {
	case protocol.PlatformLinuxPID:
		return fmt.Sprintf("%s:%d", h.Platform, h.PID)
	case protocol.PlatformGuestManaged:
		return h.Platform + ":" + h.ID
	case protocol.PlatformNetns:
		return netnsKey(h.ContainerID, h.IfName)
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
	case protocol.PlatformNetns:
		return e.attachNetns(ctx, r)
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
// the global overlay. Steps: validate, lock, identify the process, settle
// an earlier attachment of its PID, take addresses, build the links,
// commit, publish. Every step is undone if a later one fails.
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
	release, existing, err := e.holdHandle(ctx, r.Service, key)
	if err != nil {
		return nil, err
	}
	defer release()

	id, err := e.identify(pid)
	if err != nil {
		return nil, err
	}
	var svc *serviceState
	e.locked(func() { svc = e.st.services[r.Service] })
	if svc == nil {
		return nil, fmt.Errorf("service %s has no overlay on this node; call setup_service_overlay first", r.Service)
	}
	if existing != nil {
		if done, resp, err := e.settleExisting(ctx, existing, id, r, svc); done {
			return resp, err
		}
	}
	if err := e.replaceLegacyVeths(pid); err != nil {
		return nil, err
	}
	rec, err := e.allocateAttach(key, id, r, svc)
	if err != nil {
		return nil, err
	}
	if err := e.wireContainer(ctx, rec, svc); err != nil {
		e.releaseAttach(rec, svc)
		return nil, err
	}
	// The process may have exited while we worked: then its namespace is
	// gone and what we built is already half torn down by the kernel.
	if now, err := e.identify(pid); err != nil || now != id {
		e.unwireContainer(rec)
		e.releaseAttach(rec, svc)
		return nil, fmt.Errorf("process %d exited during the attach; nothing was kept", pid)
	}
	if err := e.commitAttach(rec); err != nil {
		e.unwireContainer(rec)
		e.releaseAttach(rec, svc)
		return nil, err
	}
	e.log.Debug("attached", "handle", key, "service", r.Service, "ip", rec.IP, "global_ip", rec.GlobalIP)
	return e.attachedAnswer(rec, r), nil
}

// settleExisting deals with an attachment the PID already has. done is
// true when the request is answered by that: the same process again
// (idempotent: links repaired, addresses kept) or a conflict. A recycled
// PID's old attachment is forgotten and the attach goes on.
func (e *Engine) settleExisting(ctx context.Context, existing *store.Attachment, id procIdentity, r protocol.AttachContainer, svc *serviceState) (done bool, resp protocol.Response, err error) {
	e.at("attach.settle")
	switch {
	case existing.StartTime != id.start || existing.NetnsInode != id.netns:
		// The PID was recycled: the old container is gone.
		e.log.Info("replacing the attachment of a process that no longer exists", "handle", existing.Key)
		if _, err := e.forgetAttachment(existing); err != nil {
			return true, nil, err
		}
		return false, nil, nil
	case existing.Service != r.Service:
		return true, nil, fmt.Errorf("%s is attached to service %s; detach it first", existing.Key, existing.Service)
	case (existing.GlobalIP != "") != (r.JoinGlobal && e.globalUp()):
		return true, nil, fmt.Errorf("%s is already attached to %s with join_global=%t; detach it to change that", existing.Key, r.Service, existing.GlobalIP != "")
	}
	if err := e.repairContainer(ctx, existing, svc); err != nil {
		return true, nil, err
	}
	return true, e.attachedAnswer(existing, r), nil
}

// allocateAttach takes the container's addresses (the service's, growing it
// when full; the node slice's with join_global) and returns its record.
func (e *Engine) allocateAttach(key string, id procIdentity, r protocol.AttachContainer, svc *serviceState) (*store.Attachment, error) {
	ip, err := e.allocateIn(svc)
	if err != nil {
		return nil, exhausted(err, svc.subnet, servicePool(r.Service))
	}
	var ip2, gip, gip2 netip.Addr
	var slice netip.Prefix
	e.locked(func() {
		e.at("attach.allocate")
		ip2, gip, gip2, slice, err = e.allocateMoreLocked(svc, r.JoinGlobal && e.st.global != nil)
		if err != nil {
			svc.Release(ip)
		}
	})
	if err != nil {
		return nil, exhausted(err, slice, poolSlice)
	}
	rec := &store.Attachment{
		Key:         key,
		Platform:    r.Handle.Platform,
		PID:         r.Handle.PID,
		Service:     r.Service,
		IP:          ip.String(),
		HostLink:    vethName(r.Handle.PID, 0),
		NetnsInode:  id.netns,
		StartTime:   id.start,
		DNSDomain:   r.DNSDomain,
		CreatedUnix: time.Now().Unix(),
	}
	if r.DNSServer.IsValid() {
		rec.DNSServer = r.DNSServer.String()
	}
	if gip.IsValid() {
		rec.GlobalIP = gip.String()
		rec.HostLinkGlobal = vethName(r.Handle.PID, 1)
	}
	if ip2.IsValid() {
		rec.IP2 = ip2.String()
	}
	if gip2.IsValid() {
		rec.GlobalIP2 = gip2.String()
	}
	return rec, nil
}

// allocateMoreLocked takes a container's addresses beyond its first: the
// service's second family (dual-stack), and with join the node slices'.
// On an error nothing is held; slice names the slice that ran out. Called
// with e.mu held.
func (e *Engine) allocateMoreLocked(svc *serviceState, join bool) (ip2, gip, gip2 netip.Addr, slice netip.Prefix, err error) {
	var taken []func()
	undo := func() {
		for _, f := range taken {
			f()
		}
	}
	take := func(pool *ipam.Pool, s netip.Prefix) netip.Addr {
		if err != nil || pool == nil {
			return netip.Addr{}
		}
		a, aerr := pool.Allocate()
		if aerr != nil {
			err, slice = aerr, s
			return netip.Addr{}
		}
		taken = append(taken, func() { pool.Release(a) })
		return a
	}
	if svc.second != nil {
		ip2 = take(svc.second.pool, svc.second.subnet)
	}
	if join && e.st.slicePool != nil {
		gip = take(e.st.slicePool, e.st.slice)
		if e.st.fam2 != nil {
			gip2 = take(e.st.fam2.pool, e.st.fam2.slice)
		}
	}
	if err != nil {
		undo()
		return netip.Addr{}, netip.Addr{}, netip.Addr{}, slice, err
	}
	return ip2, gip, gip2, slice, nil
}

// releaseAttach gives an attach's addresses back after it failed.
func (e *Engine) releaseAttach(rec *store.Attachment, svc *serviceState) {
	e.locked(func() {
		for _, a := range attachAddrs(rec) {
			if a.pool == servicePool(rec.Service) {
				releaseIfFree(svc, a.addr)
			} else {
				releaseIfFree(e.st.pool(a.pool), a.addr)
			}
		}
	})
}

// commitAttach writes an attachment and its allocations to the store and
// the desired state.
func (e *Engine) commitAttach(rec *store.Attachment) error {
	owner := attachOwner + rec.Key
	addrs := attachAddrs(rec)
	err := e.store.Update(func(tx *store.Tx) error {
		for _, a := range addrs {
			if err := tx.PutAllocation(store.Allocation{Pool: a.pool, Addr: a.addr.String(), Owner: owner}); err != nil {
				return err
			}
		}
		return tx.PutAttachment(*rec)
	})
	if err != nil {
		return err
	}
	e.locked(func() {
		e.st.attach[rec.Key] = rec
		for _, a := range addrs {
			e.st.owners[allocKey(a.pool, a.addr)] = owner
		}
	})
	return nil
}

// pooledAddr is an address and the pool it is allocated from.
type pooledAddr struct {
	pool string
	addr netip.Addr
}

// attachAddrs are the addresses a container attachment holds: in its
// service (each family) and, with join_global, in the node slices.
func attachAddrs(a *store.Attachment) []pooledAddr {
	var out []pooledAddr
	for _, x := range []struct{ pool, addr string }{
		{servicePool(a.Service), a.IP}, {servicePool(a.Service), a.IP2}, {poolSlice, a.GlobalIP}, {poolSlice2, a.GlobalIP2},
	} {
		if ip, err := netip.ParseAddr(x.addr); err == nil {
			out = append(out, pooledAddr{x.pool, ip})
		}
	}
	return out
}

func (e *Engine) globalUp() (up bool) {
	e.locked(func() { up = e.st.global != nil })
	return up
}

// attachedAnswer is the attached result, with the resolver the container
// should use.
func (e *Engine) attachedAnswer(a *store.Attachment, r protocol.AttachContainer) protocol.Attached {
	ans := protocol.Attached{IP: netip.MustParseAddr(a.IP)}
	if a.GlobalIP != "" {
		ans.GlobalIP = netip.MustParseAddr(a.GlobalIP)
	}
	if a.IP2 != "" {
		ans.IPs = []netip.Addr{ans.IP, netip.MustParseAddr(a.IP2)}
	}
	if a.GlobalIP2 != "" {
		ans.GlobalIPs = []netip.Addr{ans.GlobalIP, netip.MustParseAddr(a.GlobalIP2)}
	}
	ans.DNSServer, ans.DNSDomain = e.containerDNS(a.Service, false, r.DNSServer, r.DNSDomain)
	return ans
}

// wireContainer builds the links of a new attachment: eth0 on the service
// bridge with a default route via the gateway of its range; eth1 with a
// node-slice address, the cluster CIDR routed via the node IP. On error
// nothing of it is left.
func (e *Engine) wireContainer(ctx context.Context, a *store.Attachment, svc *serviceState) error {
	return e.buildContainerLinks(ctx, a, svc, true)
}

// repairContainer brings the links of a committed attachment back to what
// it says (a repeated attach, a reconcile pass). On error eth0 stays: the
// attachment is still wanted and was answered ok, and its eth0 may be the
// working link it has had all along; a failure on eth1 must not take that
// too. The next reconcile pass retries.
func (e *Engine) repairContainer(ctx context.Context, a *store.Attachment, svc *serviceState) error {
	return e.buildContainerLinks(ctx, a, svc, false)
}

// buildContainerLinks is wireContainer, and with fresh false
// repairContainer.
func (e *Engine) buildContainerLinks(ctx context.Context, a *store.Attachment, svc *serviceState, fresh bool) error {
	if err := e.waitDetached(ctx, a.HostLink); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(a.IP)
	if err != nil {
		return err
	}
	ip2, _ := netip.ParseAddr(a.IP2)
	var rng, rng2 svcRange
	var ok, ok2 bool
	var bridge string
	e.locked(func() { rng, ok = svc.rangeOf(ip); rng2, ok2 = svc.rangeOf(ip2); bridge = svc.rec.Bridge })
	if !ok {
		return fmt.Errorf("%s is outside every range of service %s", ip, svc.rec.Name)
	}
	alias := e.linkAlias("veth", a.Key)
	spec := linuxnet.AttachSpec{
		PID:        int(a.PID),
		NetnsPath:  a.NetnsPath,
		NetnsInode: pinnedInode(a),
		HostName:   a.HostLink,
		IfName:     containerIfName(a, 0),
		Addr:       netip.PrefixFrom(ip, rng.subnet.Bits()),
		MTU:        e.cfg.MTU,
		Bridge:     bridge,
		Gateway:    rng.gateway,
		HostAlias:  alias,
	}
	if ip2.IsValid() && ok2 {
		spec.Addr2, spec.Gateway2 = netip.PrefixFrom(ip2, rng2.subnet.Bits()), rng2.gateway
	}
	if err = e.cfg.Net.Attach(spec); err != nil {
		return err
	}
	if a.GlobalIP == "" {
		return nil
	}
	if err := e.wireGlobal(ctx, a, alias); err != nil {
		if !fresh {
			return err
		}
		if derr := e.cfg.Net.Detach(a.HostLink); derr != nil {
			e.log.Warn("rollback of eth0 failed; reconcile removes it", "link", a.HostLink, "err", derr)
		}
		return err
	}
	return nil
}

// wireGlobal builds a join_global container's eth1.
func (e *Engine) wireGlobal(ctx context.Context, a *store.Attachment, alias string) error {
	if err := e.waitDetached(ctx, a.HostLinkGlobal); err != nil {
		return err
	}
	gip, err := netip.ParseAddr(a.GlobalIP)
	if err != nil {
		return err
	}
	var g *globalState
	var cluster netip.Prefix
	var fam2 *family
	e.locked(func() { g, cluster, fam2 = e.st.global, e.st.cluster, e.st.fam2 })
	if g == nil {
		return errors.New("join_global needs the global overlay, which is not set up")
	}
	spec := linuxnet.AttachSpec{
		PID:        int(a.PID),
		NetnsPath:  a.NetnsPath,
		NetnsInode: pinnedInode(a),
		HostName:   a.HostLinkGlobal,
		IfName:     containerIfName(a, 1),
		Addr:       netip.PrefixFrom(gip, gip.BitLen()),
		MTU:        e.cfg.MTU,
		// No preferred source on the host route: the kernel flushes routes
		// whose source address disappears, and the node IP disappears with
		// a userspace device whenever the daemon restarts.
		HostRoute: true,
		Routes:    []linuxnet.ContainerRoute{{Dst: cluster, Via: g.nodeIP, OnLink: true}},
		HostAlias: alias,
	}
	if gip2, err := netip.ParseAddr(a.GlobalIP2); err == nil && fam2 != nil && g.nodeIP2.IsValid() {
		spec.Addr2 = netip.PrefixFrom(gip2, gip2.BitLen())
		spec.Routes = append(spec.Routes, linuxnet.ContainerRoute{Dst: fam2.cluster, Via: g.nodeIP2, OnLink: true})
	}
	if err = e.cfg.Net.Attach(spec); err != nil {
		return fmt.Errorf("%s: %w", containerIfName(a, 1), err)
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

// ensureHostRoute re-adds the host route of a container's eth1 when it is
// missing. The route names the node IP as its source, and the kernel drops
// such routes when that address goes away: whenever the global device
// vanishes (a userspace device dies with a killed daemon; a teardown) while
// the container's links survive.
func (e *Engine) ensureHostRoute(a *store.Attachment, changes *int) error {
	if a.HostLinkGlobal == "" {
		return nil
	}
	var g *globalState
	e.locked(func() { g = e.st.global })
	if g == nil {
		return nil
	}
	have, err := e.cfg.Net.Routes(a.HostLinkGlobal)
	if err != nil {
		return err
	}
	for _, x := range []struct {
		addr string
		src  netip.Addr
	}{{a.GlobalIP, g.nodeIP}, {a.GlobalIP2, netip.Addr{}}} {
		gip, err := netip.ParseAddr(x.addr)
		if err != nil {
			continue
		}
		dst := netip.PrefixFrom(gip, gip.BitLen())
		if slices.ContainsFunc(have, func(r linuxnet.Route) bool { return r.Dst == dst }) {
			continue
		}
		e.log.Info("container lost its host route; re-adding it", "handle", a.Key, "route", dst, "dev", a.HostLinkGlobal)
		*changes++
		if err := e.cfg.Net.EnsureRoute(linuxnet.Route{Dst: dst, Dev: a.HostLinkGlobal, Src: x.src}); err != nil {
			return err
		}
	}
	return nil
}

// restoreHostRoutes re-adds the host routes of every join_global container
// (see ensureHostRoute), for when the node IP has just come back.
func (e *Engine) restoreHostRoutes() {
	if e.cfg.Net == nil || e.cfg.Caps.NoBridges {
		return
	}
	var list []*store.Attachment
	e.locked(func() {
		for _, a := range e.st.attach {
			if a.HostLinkGlobal != "" {
				list = append(list, a)
			}
		}
	})
	var n int
	for _, a := range list {
		if err := e.ensureHostRoute(a, &n); err != nil {
			e.log.Warn("re-adding a container's host route failed; reconcile retries", "handle", a.Key, "err", err)
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
	case protocol.PlatformNetns:
		if err := validNetnsHandle(r.Handle, false); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown handle platform %q", r.Handle.Platform)
	}
	a, release, err := e.lockDetach(ctx, r.Handle)
	if err != nil {
		return nil, err
	}
	if a == nil {
		return protocol.OK{}, nil
	}
	defer release()
	gone, err := e.detachAttachment(ctx, a)
	if err != nil {
		return nil, err
	}
	if a.Platform == protocol.PlatformNetns {
		// A CNI runtime may ADD the interface again, or look for it, as
		// soon as DEL returns; the main daemon does neither with a PID's.
		select {
		case <-gone:
		case <-ctx.Done():
		}
	}
	return protocol.OK{}, nil
}

// holdHandle takes the locks of an attach of handle key to service: the
// handle's, the service's, and those of the service the handle's current
// attachment belongs to, which may be another (a recycled PID's): a
// teardown of that service forgets its members holding only its own lock,
// and must not forget this one too. It returns the attachment as it
// stands under the locks (nil: none).
func (e *Engine) holdHandle(ctx context.Context, service, key string) (release func(), existing *store.Attachment, err error) {
	for {
		var seen *store.Attachment
		e.locked(func() { seen = e.st.attach[key] })
		keys := []string{handleLock(key), serviceLock(service)}
		if seen != nil && seen.Service != service {
			keys = append(keys, serviceLock(seen.Service))
		}
		if release, err = e.hold(ctx, keys...); err != nil {
			return nil, nil, err
		}
		e.locked(func() { existing = e.st.attach[key] })
		if existing == seen {
			return release, existing, nil
		}
		release() // it changed before we had the locks: look again
	}
}

// lockDetach takes what a detach of h needs and returns h's attachment
// (nil: none, and nothing held). Which locks those are shows only in the
// attachment, read before they are taken, so it is read again after: one
// replaced meanwhile (a guest's new key) means taking its locks instead.
func (e *Engine) lockDetach(ctx context.Context, h protocol.AttachHandle) (*store.Attachment, func(), error) {
	key := handleKey(h)
	for {
		var a *store.Attachment
		e.locked(func() { a = e.st.attach[key] })
		if a == nil {
			return nil, nil, nil
		}
		keys := detachLocks(a, h)
		release, err := e.hold(ctx, keys...)
		if err != nil {
			return nil, nil, err
		}
		e.locked(func() { a = e.st.attach[key] })
		if a != nil && slices.Equal(detachLocks(a, h), keys) {
			return a, release, nil
		}
		release()
	}
}

// detachLocks are the locks a detach of a holds: its service and handle,
// and a guest's peer and claims (see guestLocks).
func detachLocks(a *store.Attachment, h protocol.AttachHandle) []string {
	lockKey := handleKey(h)
	if a.Platform == protocol.PlatformWindowsContainer {
		lockKey = "windows:" + h.ContainerID
	}
	return append(guestLocks(a), serviceLock(a.Service), handleLock(lockKey))
}

// detachAttachment forgets an attachment and removes its kernel side. The
// caller holds the service and handle locks. The channel is closed once the
// attachment's links are gone.
func (e *Engine) detachAttachment(ctx context.Context, a *store.Attachment) (<-chan struct{}, error) {
	switch a.Platform {
	case protocol.PlatformGuestManaged:
		return closed, e.detachGuest(a)
	case protocol.PlatformWindowsContainer:
		return closed, e.detachWindows(ctx, a)
	}
	return e.forgetAttachment(a)
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// forgetAttachment commits the removal of a container attachment, then
// deletes its links in the background: the kernel answers a link deletion
// only after an RCU grace period (~20 ms), which the caller need not wait
// for. The addresses return to their pools only once the links are gone,
// so they are never handed out while still configured; if we crash in
// between, the start-up reconcile deletes the links (ours by their alias,
// wanted by nobody) before the first request. The channel is closed when
// the links are gone.
func (e *Engine) forgetAttachment(a *store.Attachment) (<-chan struct{}, error) {
	addrs := attachAddrs(a)
	err := e.store.Update(func(tx *store.Tx) error {
		for _, x := range addrs {
			if err := tx.DeleteAllocation(x.pool, x.addr.String()); err != nil {
				return err
			}
		}
		return tx.DeleteAttachment(a.Key)
	})
	if err != nil {
		return nil, err
	}
	// The links are marked as being deleted before the state forgets the
	// attachment: a request that finds the handle free from then on (an
	// attach of the same container to another service, while a teardown
	// holding only this one's service lock forgets it) must also find its
	// links pending, and wait for them (waitDetached) before it builds its
	// own under the same names, or the deletion below removes those.
	links := []string{a.HostLink}
	if a.HostLinkGlobal != "" {
		links = append(links, a.HostLinkGlobal)
	}
	done := make(chan struct{})
	for _, l := range links {
		e.detaching.Store(l, done)
	}
	// The pools as they are now: one replaced meanwhile (a service torn
	// down and set up again) must not get these addresses back.
	pools := make([]addrPool, len(addrs))
	e.locked(func() {
		delete(e.st.attach, a.Key)
		for i, x := range addrs {
			delete(e.st.owners, allocKey(x.pool, x.addr))
			pools[i] = e.st.pool(x.pool)
		}
	})
	e.at("attach.forgotten")

	started := e.goBackground(func() {
		defer close(done)
		for _, l := range links {
			if e.cfg.Net != nil {
				if err := e.cfg.Net.Detach(l); err != nil {
					e.log.Warn("removing container link failed; reconcile retries", "link", l, "err", err)
				}
			}
			e.detaching.CompareAndDelete(l, done)
		}
		e.locked(func() {
			for i, x := range addrs {
				releaseIfFree(pools[i], x.addr)
			}
		})
	})
	if !started {
		// The engine is closed (the daemon is exiting): the links stay
		// for the next start's reconcile, as after a crash here.
		for _, l := range links {
			e.detaching.CompareAndDelete(l, done)
		}
		close(done)
		e.log.Warn("engine closed: container links are removed at the next start", "links", links)
	}
	return done, nil
}

// defaultDetachWait is how long an attach waits for the links of an earlier
// detach of the same container to go: a veth's removal takes the kernel
// milliseconds, and an RCU grace period at worst.
const defaultDetachWait = 10 * time.Second

// waitDetached waits until a background deletion of link name finished, so
// a re-attach of the same PID never races the old link. A deletion still
// running after detachWait is an error, not a go-ahead: it deletes by name,
// and would remove the links built meanwhile after they were answered ok.
func (e *Engine) waitDetached(ctx context.Context, name string) error {
	if name == "" {
		return nil
	}
	v, ok := e.detaching.Load(name)
	if !ok {
		return nil
	}
	t := time.NewTimer(e.detachWait)
	defer t.Stop()
	select {
	case <-v.(chan struct{}):
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the removal of %s, the link of an earlier detach: %w", name, ctx.Err())
	case <-t.C:
		return fmt.Errorf("%s, the link of an earlier detach of this container, is still being removed after %s; nothing was changed, retry once it is gone", name, e.detachWait)
	}
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

// exhausted words a pool's exhaustion for the main daemon.
func exhausted(err error, p netip.Prefix, pool string) error {
	if errors.Is(err, errExhausted) {
		if pool == poolSlice {
			return fmt.Errorf("the node slice %s has no free address left; detach containers or guests, or give this node a larger slice_cidr", p)
		}
		return fmt.Errorf("subnet %s of %s has no free address left, and the node slice has no room to grow it; detach containers, or set the service up with a larger subnet", p, strings.TrimPrefix(pool, "service:"))
	}
	return err
}
