package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
)

func (e *Engine) reconcileLoop() {
	defer e.bg.Done()
	t := time.NewTicker(e.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-e.bgStop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), e.cfg.ReconcileInterval)
			if n, err := e.reconcile(ctx, false); err != nil {
				e.log.Warn("reconcile failed; retrying on the next tick", "err", err)
			} else if n > 0 {
				e.log.Info("reconcile repaired drift", "changes", n)
			}
			cancel()
		}
	}
}

// Reconcile runs one reconcile pass now (tests and operators).
func (e *Engine) Reconcile(ctx context.Context) (int, error) { return e.reconcile(ctx, false) }

// reconcile puts the kernel back to the desired state and drops desired
// state that can no longer exist (attachments of containers that died).
// It deletes only links that carry our alias and that nothing wants, and
// never touches anything else. It returns the number of changes.
func (e *Engine) reconcile(ctx context.Context, startup bool) (int, error) {
	if e.cfg.Net == nil {
		return 0, nil
	}
	e.global.RLock()
	defer e.global.RUnlock()
	changes := 0
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	note(e.reconcileGlobal(ctx, &changes))
	e.mu.Lock()
	names := make([]string, 0, len(e.st.services))
	for n := range e.st.services {
		names = append(names, n)
	}
	e.mu.Unlock()
	for _, n := range names {
		note(e.reconcileService(ctx, n, &changes))
	}
	note(e.reconcileAttachments(ctx, &changes))
	note(e.removeOrphanLinks(&changes, startup))
	note(e.dropOrphanAllocations(&changes))

	if e.fw != nil && !startup && e.syncFirewall(true) {
		changes++
	}
	if e.dns != nil && !startup && e.dns.lastErr.Load() != nil {
		e.updateDNS() // a port that was taken may be free now
	}
	e.reconcileRuns.Add(1)
	e.reconcileChanges.Add(uint64(changes))
	e.lastReconcile.Store(time.Now().Unix())
	if changes > 0 || startup {
		e.topologyChanged()
	}
	return changes, errors.Join(errs...)
}

func (e *Engine) reconcileGlobal(ctx context.Context, changes *int) error {
	e.mu.Lock()
	g := e.st.global
	key, cluster := e.st.key, e.st.cluster
	e.mu.Unlock()
	if g == nil {
		return nil
	}
	spec := e.globalSpec(g.rec, key, cluster, g.nodeIP)
	if g.dev == nil {
		dev, err := e.openDevice(ctx, spec)
		if err != nil {
			return fmt.Errorf("restore %s: %w", g.rec.Interface, err)
		}
		e.mu.Lock()
		g.dev = dev
		e.mu.Unlock()
		*changes++
		e.log.Info("global device restored", "interface", g.rec.Interface, "peers", len(spec.peers))
		if g.rec.NATEnabled {
			e.probeSoon()
		}
		return nil
	}
	return e.syncDevice(ctx, g.dev, spec, false)
}

func (e *Engine) reconcileService(ctx context.Context, name string, changes *int) error {
	unlock := e.serviceLock(name)
	defer unlock()
	e.mu.Lock()
	svc := e.st.services[name]
	e.mu.Unlock()
	if svc == nil {
		return nil
	}
	had := svc.dev != nil
	exists := true
	if !e.cfg.Caps.NoBridges {
		var err error
		if exists, err = e.cfg.Net.LinkExists(svc.rec.Bridge); err != nil {
			return err
		}
	}
	if err := e.ensureService(ctx, svc); err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	if !exists || (svc.dedicated() && !had) {
		*changes++
		e.log.Info("service restored", "service", name, "bridge", svc.rec.Bridge)
	}
	return nil
}

// reconcileAttachments forgets containers whose process is gone (their
// links go with them) and re-creates the links of live containers that
// lost them.
func (e *Engine) reconcileAttachments(ctx context.Context, changes *int) error {
	if e.cfg.Caps.NoBridges {
		return nil
	}
	links, err := e.cfg.Net.Links("zl-v")
	if err != nil {
		return err
	}
	present := map[string]bool{}
	for _, l := range links {
		present[l.Name] = true
	}
	e.mu.Lock()
	var list []*store.Attachment
	for _, a := range e.st.attach {
		if a.Platform == "linux_pid" {
			list = append(list, a)
		}
	}
	e.mu.Unlock()
	var errs []error
	for _, a := range list {
		if err := e.reconcileAttachment(ctx, a, present, changes); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Key, err))
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) reconcileAttachment(ctx context.Context, a *store.Attachment, present map[string]bool, changes *int) error {
	unlock := e.locks.lock("service:"+a.Service, "handle:"+a.Key)
	defer unlock()
	e.mu.Lock()
	cur := e.st.attach[a.Key]
	svc := e.st.services[a.Service]
	e.mu.Unlock()
	if cur != a {
		return nil // changed by a request meanwhile
	}
	start, err := e.cfg.Procs.StartTime(int(a.PID))
	alive := err == nil && start == a.StartTime
	if alive {
		if ino, err := e.cfg.Procs.NetnsInode(int(a.PID)); err != nil || ino != a.NetnsInode {
			alive = false
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if !alive || svc == nil {
		e.log.Info("container gone; releasing its attachment", "handle", a.Key, "service", a.Service, "ip", a.IP)
		*changes++
		return e.forgetAttachment(ctx, a)
	}
	if present[a.HostLink] && (a.HostLinkGlobal == "" || present[a.HostLinkGlobal]) {
		return e.ensureHostRoute(a, changes)
	}
	e.log.Info("container lost its links; re-creating them", "handle", a.Key)
	*changes++
	return e.wireContainer(ctx, a, svc)
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
	gip, err := netip.ParseAddr(a.GlobalIP)
	if err != nil {
		return err
	}
	e.mu.Lock()
	var nodeIP netip.Addr
	if g := e.st.global; g != nil {
		nodeIP = g.nodeIP
	}
	e.mu.Unlock()
	if !nodeIP.IsValid() {
		return nil
	}
	dst := netip.PrefixFrom(gip, gip.BitLen())
	have, err := e.cfg.Net.Routes(a.HostLinkGlobal)
	if err != nil {
		return err
	}
	for _, r := range have {
		if r.Dst == dst {
			return nil
		}
	}
	e.log.Info("container lost its host route; re-adding it", "handle", a.Key, "route", dst, "dev", a.HostLinkGlobal)
	*changes++
	return e.cfg.Net.EnsureRoute(linuxnet.Route{Dst: dst, Dev: a.HostLinkGlobal, Src: nodeIP})
}

// restoreHostRoutes re-adds the host routes of every join_global container
// (see ensureHostRoute), for when the node IP has just come back.
func (e *Engine) restoreHostRoutes() {
	if e.cfg.Net == nil || e.cfg.Caps.NoBridges {
		return
	}
	e.mu.Lock()
	var list []*store.Attachment
	for _, a := range e.st.attach {
		if a.HostLinkGlobal != "" {
			list = append(list, a)
		}
	}
	e.mu.Unlock()
	var n int
	for _, a := range list {
		if err := e.ensureHostRoute(a, &n); err != nil {
			e.log.Warn("re-adding a container's host route failed; reconcile retries", "handle", a.Key, "err", err)
		}
	}
}

// removeOrphanLinks deletes links labelled as ours that the desired state
// no longer has: bridges of services torn down while we were not running,
// veths of attachments we forgot, devices of an old deployment name.
//
// At start-up it also deletes unlabelled veths named by our scheme
// (zl-v<pid>-e<n>) that nothing wants. The kernel ignores a label given at
// creation, so an attach killed between creating the pair and labelling it
// leaves exactly that, with the container's end still inside the
// container; no request of ours is in flight at start-up, and no one else
// names veths like this.
func (e *Engine) removeOrphanLinks(changes *int, startup bool) error {
	links, err := e.cfg.Net.Links("")
	if err != nil {
		return err
	}
	want := e.wantedLinks()
	ours := e.aliasPrefix()
	var errs []error
	for _, l := range links {
		if want[l.Name] {
			continue
		}
		_, _, ourVethName := parseVethName(l.Name)
		unlabelled := startup && l.Alias == "" && l.Kind == "veth" && ourVethName
		if !strings.HasPrefix(l.Alias, ours) && !unlabelled {
			continue
		}
		if _, pending := e.detaching.Load(l.Name); pending {
			continue
		}
		// A request creating this link right now labels it before it
		// records it in the state, holding the lock of what it works on:
		// wait for it, then look again.
		unlock, judge := e.creatorLock(strings.TrimPrefix(l.Alias, ours), startup)
		if !judge {
			continue
		}
		if e.wantedLinks()[l.Name] {
			unlock()
			continue
		}
		if unlabelled {
			e.log.Info("removing an unlabelled veth of ours that nothing wants (an attach interrupted by a crash)", "link", l.Name)
		} else {
			e.log.Info("removing a link of ours that nothing wants", "link", l.Name, "kind", l.Kind, "label", l.Alias)
		}
		var err error
		if l.Kind == "veth" {
			err = e.cfg.Net.Detach(l.Name)
		} else {
			err = e.cfg.Net.DeleteLink(l.Name)
		}
		unlock()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*changes++
	}
	return errors.Join(errs...)
}

// wantedLinks is every link name the desired state has.
func (e *Engine) wantedLinks() map[string]bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	want := map[string]bool{}
	if g := e.st.global; g != nil {
		want[g.rec.Interface] = true
	}
	for _, svc := range e.st.services {
		want[svc.rec.Bridge] = true
		if svc.rec.Interface != "" {
			want[svc.rec.Interface] = true
		}
	}
	for _, a := range e.st.attach {
		if a.HostLink != "" {
			want[a.HostLink] = true
		}
		if a.HostLinkGlobal != "" {
			want[a.HostLinkGlobal] = true
		}
	}
	return want
}

// creatorLock takes the lock a request holds while it creates the link
// with this label (without our prefix): the container's for a veth, the
// service's for a bridge. A device's label names the device, not the
// service whose setup may be creating it, so only the start-up reconcile,
// when no request is in flight, judges devices (judge is false otherwise).
func (e *Engine) creatorLock(label string, startup bool) (unlock func(), judge bool) {
	kind, key, _ := strings.Cut(label, ":")
	switch kind {
	case "veth":
		return e.locks.lock("handle:" + key), true
	case "bridge":
		return e.serviceLock(key), true
	}
	return func() {}, startup
}

// dropOrphanAllocations deletes allocation records whose owner no longer
// exists (a crash between forgetting an attachment and committing, or a
// pool that went away) and returns their addresses.
func (e *Engine) dropOrphanAllocations(changes *int) error {
	type orphan struct {
		pool string
		addr netip.Addr
	}
	var orphans []orphan
	e.mu.Lock()
	for k, owner := range e.st.owners {
		pool, addr, _ := cut(k)
		a, err := netip.ParseAddr(addr)
		if err != nil {
			continue
		}
		gone := e.st.pool(pool) == nil
		if h, ok := strings.CutPrefix(owner, attachOwner); ok && e.st.attach[h] == nil {
			gone = true
		}
		if id, ok := strings.CutPrefix(owner, guestOwner); ok && e.st.attach["guest_managed:"+id] == nil {
			gone = true
		}
		if gone {
			orphans = append(orphans, orphan{pool, a})
		}
	}
	e.mu.Unlock()
	if len(orphans) == 0 {
		return nil
	}
	err := e.store.Update(func(tx *store.Tx) error {
		for _, o := range orphans {
			if err := tx.DeleteAllocation(o.pool, o.addr.String()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	e.mu.Lock()
	for _, o := range orphans {
		delete(e.st.owners, allocKey(o.pool, o.addr))
		releaseIfFree(e.st.pool(o.pool), o.addr)
	}
	e.mu.Unlock()
	*changes += len(orphans)
	e.log.Info("released addresses whose owners are gone", "count", len(orphans))
	return nil
}
