package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Resource locks serialise work on one resource (the node record, a
// service, a container, a peer, a DNS name) while work on different
// resources runs in parallel. The lock model as a whole is in engine.go.
//
// A caller takes every lock it needs in one call, and never another while
// it holds some: lock orders them by class (below) and then by key, so two
// callers needing overlapping sets always queue in the same order and never
// deadlock.

// Lock classes, in the order they are taken.
var lockClasses = []string{"node", "service:", "handle:", "peer:", "claim:", "dns:"}

func lockRank(key string) int {
	for i, c := range lockClasses {
		if strings.HasPrefix(key, c) {
			return i
		}
	}
	panic("engine: lock key " + key + " has no class") // a programming error, caught by every test
}

type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

// keyedLock is a one-slot semaphore, so waiting for it can give up when the
// request's context ends. Entries are reference counted: the map does not
// grow with every PID ever seen.
type keyedLock struct {
	ch   chan struct{}
	refs int
}

func nodeLock() string                  { return "node" }
func serviceLock(name string) string    { return "service:" + name }
func handleLock(key string) string      { return "handle:" + key }
func peerLock(scope, pub string) string { return "peer:" + peerKey(scope, pub) }
func dnsLock(name string) string        { return "dns:" + name }

// claimLock serialises the requests that give one prefix to a peer: each
// takes it from whoever holds it, and two that find no holder would both
// keep it (WireGuard keeps it on one peer only).
func claimLock(scope, prefix string) string { return "claim:" + peerKey(scope, prefix) }

// lock takes the locks of keys and returns the function that releases
// them. ctx bounds only the waiting: a free lock is taken even when ctx has
// ended. When ctx ends while a lock is held by someone else, lock releases
// what it took and says which resource is busy.
func (k *keyedLocks) lock(ctx context.Context, keys ...string) (func(), error) {
	keys = sortedKeys(keys)
	held := make([]*keyedLock, 0, len(keys))
	release := func() {
		for i := len(held) - 1; i >= 0; i-- {
			<-held[i].ch
			k.put(keys[i], held[i])
		}
	}
	for _, key := range keys {
		l := k.get(key)
		// select picks at random among ready cases, so with ctx already
		// ended a free lock would be refused half the time: a reconcile
		// pass whose budget a slow step had spent then skipped repairs
		// by coin toss.
		select {
		case l.ch <- struct{}{}:
			held = append(held, l)
			continue
		default:
		}
		select {
		case l.ch <- struct{}{}:
			held = append(held, l)
		case <-ctx.Done():
			k.put(key, l)
			release()
			return nil, fmt.Errorf("%s is busy with another request that did not finish in time (%w); retry", strings.TrimSuffix(key, ":"), ctx.Err())
		}
	}
	return release, nil
}

func (k *keyedLocks) get(key string) *keyedLock {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	return l
}

func (k *keyedLocks) put(key string, l *keyedLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(k.m, key)
	}
}

// sortedKeys orders keys by class, then by name, without duplicates.
func sortedKeys(keys []string) []string {
	out := slices.Clone(keys)
	slices.SortFunc(out, func(a, b string) int {
		if ra, rb := lockRank(a), lockRank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
	return slices.Compact(out)
}

// locked runs f holding e.mu. f must do no I/O. The lock is released by
// defer, so a panic in f (a bug) cannot leave every later request stuck.
func (e *Engine) locked(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f()
}

// hold takes what a request that does not change the global overlay needs:
// the topology for reading, then the resource locks of keys. release gives
// both back. On an error nothing is held.
func (e *Engine) hold(ctx context.Context, keys ...string) (release func(), err error) {
	e.topology.RLock()
	unlock, err := e.locks.lock(ctx, keys...)
	if err != nil {
		e.topology.RUnlock()
		return nil, err
	}
	return func() { unlock(); e.topology.RUnlock() }, nil
}

// holdLooking is hold for a request that learns which resource locks it
// needs by looking at the desired state: take looks, takes them in one
// call, and looks again. The topology is held from the first look on, so
// what it saw of the global overlay (the slice pool a guest's address comes
// from) is still so once the locks are taken.
func (e *Engine) holdLooking(take func() (unlock func(), err error)) (release func(), err error) {
	e.topology.RLock()
	unlock, err := take()
	if err != nil {
		e.topology.RUnlock()
		return nil, err
	}
	return func() { unlock(); e.topology.RUnlock() }, nil
}

// holdExclusive is hold for requests that change the global overlay: no
// other request or pass runs meanwhile.
func (e *Engine) holdExclusive(ctx context.Context, keys ...string) (release func(), err error) {
	e.topology.Lock()
	unlock, err := e.locks.lock(ctx, keys...)
	if err != nil {
		e.topology.Unlock()
		return nil, err
	}
	return func() { unlock(); e.topology.Unlock() }, nil
}
