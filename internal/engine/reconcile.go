package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// reconcileLoop runs a pass one interval after the last one ended, or as
// long after as that pass took if it took longer. A pass that outlasts the
// interval (a thousand peers on a slow CPU, a short --reconcile-interval)
// would otherwise start the next at once, and passes back to back hold the
// devices' locks and a CPU nearly all the time: requests then waited seconds
// each in an emulated guest. This way they have the devices at least half
// the time.
func (e *Engine) reconcileLoop() {
	t := time.NewTimer(e.cfg.ReconcileInterval)
	defer t.Stop()
	// Close ends a pass's lookups and lock waits, so it need not wait for
	// them.
	ctx := e.bgCtx
	for {
		select {
		case <-e.bgCtx.Done():
			return
		case <-t.C:
			start := time.Now()
			if n, err := e.reconcile(ctx, false); err != nil {
				e.log.Warn("reconcile failed; retrying on the next tick", "err", err)
			} else if n > 0 {
				e.log.Info("reconcile repaired drift", "changes", n)
			}
			t.Reset(max(e.cfg.ReconcileInterval, time.Since(start)))
		}
	}
}

// How long a pass waits for peers' host names in all. A resolver that
// answers does so in milliseconds; one that does not must cost a pass no
// more than about one name's timeout however many names there are, and
// must not keep the node from serving at start (it serves only once
// restored) nor hold a setup_global_overlay long. Names left unresolved
// are looked up again by every pass, and a peer that contacts us is
// reached at once whatever its name does.
const (
	passResolveBudget    = 2 * resolveTimeout
	startupResolveBudget = time.Second
)

// Reconcile runs one reconcile pass now (tests and operators).
func (e *Engine) Reconcile(ctx context.Context) (int, error) { return e.reconcile(ctx, false) }

// reconcile runs one pass and reports how long it took and whether it
// failed to the observer (metrics).
func (e *Engine) reconcile(ctx context.Context, startup bool) (int, error) {
	start := time.Now()
	n, err := e.reconcilePass(ctx, startup)
	e.observeReconcile(time.Since(start), err)
	return n, err
}

// reconcilePass puts the kernel back to the desired state and drops desired
// state that can no longer exist (attachments of containers that died).
// It deletes only links that carry our alias and that nothing wants, and
// never touches anything else. Every repair takes the locks a request on
// the same thing would, and every device is brought to the desired state
// read under its device lock, so a pass never undoes an ok. It returns the
// number of changes.
func (e *Engine) reconcilePass(ctx context.Context, startup bool) (int, error) {
	if e.cfg.Net == nil {
		return 0, nil
	}
	e.passMu.Lock()
	defer e.passMu.Unlock()
	// Names take seconds to resolve: before any lock.
	var peers []store.Peer
	e.locked(func() {
		for _, p := range e.st.peers {
			peers = append(peers, *p)
		}
	})
	budget := passResolveBudget
	if startup {
		budget = startupResolveBudget
	}
	resolveCtx, cancelResolve := context.WithTimeout(ctx, budget)
	e.resolveEndpoints(resolveCtx, peers)
	cancelResolve()
	// The pass waits for locks held by requests at most one interval in
	// all, counted from here: the lookups above have their own bounds, and
	// counting them too left a pass after slow names no time to repair.
	if e.cfg.ReconcileInterval > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.cfg.ReconcileInterval)
		defer cancel()
	}

	e.topology.RLock()
	defer e.topology.RUnlock()
	changes := 0
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	note(e.reconcileGlobal(&changes))
	var names []string
	e.locked(func() {
		for n := range e.st.services {
			names = append(names, n)
		}
	})
	for _, n := range names {
		note(e.reconcileService(ctx, n, &changes))
	}
	note(e.reconcileAttachments(ctx, &changes))
	note(e.finishDetaches(ctx, &changes))
	note(e.removeOrphanLinks(ctx, &changes, startup))
	note(e.removeLegacyLinks(&changes))
	note(e.dropOrphanAllocations(&changes))
	e.pruneResolved()

	// DNS first: our table lists the DNS listeners bound, and one the
	// retry binds must be in it from this pass on, not open to the
	// underlay until the next.
	if e.dns != nil && !startup && e.dns.lastErr.Load() != nil {
		e.updateDNS() // a port that was taken may be free now
	}
	if e.fw != nil && !startup && e.syncFirewall(true) {
		changes++
	}
	e.reconcileRuns.Add(1)
	e.reconcileChanges.Add(uint64(changes))
	e.lastReconcile.Store(time.Now().Unix())
	if changes > 0 || startup {
		e.topologyChanged()
	}
	return changes, errors.Join(errs...)
}

func (e *Engine) reconcileGlobal(changes *int) error {
	var g *globalState
	e.locked(func() { g = e.st.global })
	if g == nil {
		return nil
	}
	if g.dev == nil {
		spec := e.currentGlobalSpec()
		spec.bind = e.globalBind(g.rec)
		dev, err := e.openDevice(spec)
		if err != nil {
			return fmt.Errorf("restore %s: %w", g.rec.Interface, err)
		}
		e.locked(func() { g.dev = dev })
		e.natUseBind(dev)
		*changes++
		e.log.Info("global device restored", "interface", g.rec.Interface, "peers", len(spec.peers))
		e.natFollowGlobal()
		return nil
	}
	n, err := e.syncDevice(g.dev, e.currentGlobalSpec)
	if n > 0 {
		e.log.Info("global device repaired", "interface", g.rec.Interface, "changes", n)
	}
	*changes += n
	return err
}

func (e *Engine) reconcileService(ctx context.Context, name string, changes *int) error {
	unlock, err := e.locks.lock(ctx, serviceLock(name))
	if err != nil {
		return err
	}
	defer unlock()
	var svc *serviceState
	e.locked(func() { svc = e.st.services[name] })
	if svc == nil {
		return nil
	}
	had := svc.dev != nil
	exists := true
	if !e.cfg.Caps.NoBridges {
		if exists, err = e.cfg.Net.LinkExists(svc.rec.Bridge); err != nil {
			return err
		}
	}
	if err := e.ensureService(svc); err != nil {
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
	var list []*store.Attachment
	e.locked(func() {
		for _, a := range e.st.attach {
			if a.Platform == "linux_pid" || a.Platform == protocol.PlatformNetns {
				list = append(list, a)
			}
		}
	})
	var errs []error
	for _, a := range list {
		if err := e.reconcileAttachment(ctx, a, present, changes); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Key, err))
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) reconcileAttachment(ctx context.Context, a *store.Attachment, present map[string]bool, changes *int) error {
	if a.Platform == protocol.PlatformNetns {
		return e.reconcileNetnsAttachment(ctx, a, present, changes)
	}
	unlock, err := e.locks.lock(ctx, serviceLock(a.Service), handleLock(a.Key))
	if err != nil {
		return err
	}
	defer unlock()
	var cur *store.Attachment
	var svc *serviceState
	e.locked(func() { cur, svc = e.st.attach[a.Key], e.st.services[a.Service] })
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
		_, err := e.forgetAttachment(a)
		return err
	}
	if present[a.HostLink] && (a.HostLinkGlobal == "" || present[a.HostLinkGlobal]) {
		return e.ensureHostRoute(a, changes)
	}
	e.log.Info("container lost its links; re-creating them", "handle", a.Key)
	*changes++
	return e.repairContainer(ctx, a, svc)
}

// finishDetaches completes the detaches a crash interrupted between their
// two commits (see detachWindows).
func (e *Engine) finishDetaches(ctx context.Context, changes *int) error {
	if e.cfg.HCN == nil {
		return nil
	}
	var list []*store.Attachment
	e.locked(func() {
		for _, a := range e.st.attach {
			if a.Detaching {
				list = append(list, a)
			}
		}
	})
	var errs []error
	for _, a := range list {
		unlock, err := e.locks.lock(ctx, serviceLock(a.Service), handleLock("windows:"+a.HostLink))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var cur *store.Attachment
		e.locked(func() { cur = e.st.attach[a.Key] })
		if cur == a {
			e.log.Info("finishing an interrupted detach", "handle", a.Key, "ip", a.IP)
			if err := e.detachWindows(ctx, a); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.Key, err))
			} else {
				*changes++
			}
		}
		unlock()
	}
	return errors.Join(errs...)
}

// pruneResolved forgets the resolved endpoints of peers that are gone.
func (e *Engine) pruneResolved() {
	e.locked(func() {
		for k := range e.resolved {
			if e.st.peers[k] == nil {
				delete(e.resolved, k)
			}
		}
	})
}

// removeOrphanLinks deletes links labelled as ours that the desired state
// no longer has: bridges of services torn down while we were not running,
// veths of attachments we forgot, devices of an old deployment name.
//
// At start-up it also deletes unlabelled veths named by our scheme
// (zl-v<pid>-e<n>, and zl-vn<hash> of netns attachments) that nothing
// wants. The kernel ignores a label given at
// creation, so an attach killed between creating the pair and labelling it
// leaves exactly that, with the container's end still inside the
// container; no request of ours is in flight at start-up, and no one else
// names veths like this.
func (e *Engine) removeOrphanLinks(ctx context.Context, changes *int, startup bool) error {
	links, err := e.cfg.Net.Links("")
	if err != nil {
		return err
	}
	e.at("reconcile.links")
	want := e.wantedLinks()
	ours := e.aliasPrefix()
	var errs []error
	for _, l := range links {
		if want[l.Name] {
			continue
		}
		_, _, ourVethName := parseVethName(l.Name)
		ourVethName = ourVethName || isNetnsVethName(l.Name)
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
		unlock, judge, err := e.creatorLock(ctx, strings.TrimPrefix(l.Alias, ours), startup)
		if err != nil {
			errs = append(errs, err)
			continue
		}
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
func (e *Engine) wantedLinks() (want map[string]bool) {
	e.locked(func() { want = e.st.wantedLinks() })
	return want
}

// creatorLock takes the lock a request holds while it creates the link
// with this label (without our prefix): the container's for a veth, the
// service's for a bridge. A device's label names the device, not the
// service whose setup may be creating it, so only the start-up reconcile,
// when no request is in flight, judges devices (judge is false otherwise).
func (e *Engine) creatorLock(ctx context.Context, label string, startup bool) (unlock func(), judge bool, err error) {
	kind, key, _ := strings.Cut(label, ":")
	switch kind {
	case "veth":
		unlock, err = e.locks.lock(ctx, handleLock(key))
		return unlock, err == nil, err
	case "bridge":
		unlock, err = e.locks.lock(ctx, serviceLock(key))
		return unlock, err == nil, err
	}
	return func() {}, startup, nil
}

// dropOrphanAllocations deletes allocation records whose owner no longer
// exists (a crash between forgetting an attachment and committing, or a
// pool that went away) and returns their addresses.
func (e *Engine) dropOrphanAllocations(changes *int) error {
	var orphans []orphan
	e.locked(func() { orphans = e.orphanAllocationsLocked() })
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
	e.locked(func() {
		for _, o := range orphans {
			delete(e.st.owners, allocKey(o.pool, o.addr))
			releaseIfFree(e.st.pool(o.pool), o.addr)
		}
	})
	*changes += len(orphans)
	e.log.Info("released addresses whose owners are gone", "count", len(orphans))
	return nil
}

type orphan struct {
	pool string
	addr netip.Addr
}

// orphanAllocationsLocked lists allocations whose owner or pool is gone.
// Called with e.mu held.
func (e *Engine) orphanAllocationsLocked() []orphan {
	var orphans []orphan
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
	return orphans
}
