package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// allocateIP hands out an address for the main daemon's own use: from the
// service's subnet when the service exists on this node, else from the
// node slice.
func (e *Engine) allocateIP(r protocol.AllocateIP) (protocol.Response, error) {
	if err := validName("service", r.Service); err != nil {
		return nil, err
	}
	e.global.RLock()
	defer e.global.RUnlock()
	unlock := e.serviceLock(r.Service)
	defer unlock()

	e.mu.Lock()
	poolName, pool := servicePool(r.Service), (*ipam.Pool)(nil)
	if svc := e.st.services[r.Service]; svc != nil {
		pool = svc.pool
	} else if e.st.slicePool != nil {
		poolName, pool = poolSlice, e.st.slicePool
	}
	if pool == nil {
		e.mu.Unlock()
		return nil, fmt.Errorf("service %s is not set up here and this node has no slice yet; call setup_global_overlay (or setup_service_overlay) first", r.Service)
	}
	a, err := pool.Allocate()
	e.mu.Unlock()
	if err != nil {
		return nil, exhausted(err, pool.Prefix(), poolName)
	}
	owner := ownerAPI
	if err := e.store.Update(func(tx *store.Tx) error {
		return tx.PutAllocation(store.Allocation{Pool: poolName, Addr: a.String(), Owner: owner})
	}); err != nil {
		e.mu.Lock()
		pool.Release(a)
		e.mu.Unlock()
		return nil, err
	}
	e.mu.Lock()
	e.st.owners[allocKey(poolName, a)] = owner
	e.mu.Unlock()
	return protocol.IP{IP: a}, nil
}

func exhausted(err error, p netip.Prefix, pool string) error {
	if errors.Is(err, ipam.ErrExhausted) {
		if pool == poolSlice {
			return fmt.Errorf("the node slice %s has no free address left; detach containers or guests, or give this node a larger slice_cidr", p)
		}
		return fmt.Errorf("subnet %s of %s has no free address left; detach containers, or set the service up with a larger subnet", p, strings.TrimPrefix(pool, "service:"))
	}
	return err
}

// releaseIP returns an address handed out by allocate_ip. It refuses
// addresses it never handed out, the node IP, gateways and the addresses of
// attached containers and guests, because freeing those would hand them out
// twice.
func (e *Engine) releaseIP(r protocol.ReleaseIP) (protocol.Response, error) {
	a := r.IP
	if !a.IsValid() {
		return nil, errors.New("ip is empty")
	}
	a = a.Unmap()
	e.global.RLock()
	defer e.global.RUnlock()

	e.mu.Lock()
	poolName, pool := e.st.poolFor(a)
	owner := e.st.owners[allocKey(poolName, a)]
	e.mu.Unlock()
	if pool == nil {
		return nil, fmt.Errorf("%s is in none of this node's pools (node slice or service subnets)", a)
	}
	svc, isSvc := strings.CutPrefix(poolName, "service:")
	if isSvc {
		unlock := e.serviceLock(svc)
		defer unlock()
	}
	switch {
	case owner == "":
		return nil, fmt.Errorf("%s was never allocated here", a)
	case owner == ownerNode:
		return nil, fmt.Errorf("%s is this node's overlay IP; it is released by teardown_global_overlay", a)
	case owner == ownerGW:
		return nil, fmt.Errorf("%s is the gateway of service %s; it is released by teardown_service_overlay", a, svc)
	case owner != ownerAPI:
		return nil, fmt.Errorf("%s is held by %s; detach it instead", a, strings.TrimPrefix(strings.TrimPrefix(owner, attachOwner), guestOwner))
	}
	if err := e.store.Update(func(tx *store.Tx) error { return tx.DeleteAllocation(poolName, a.String()) }); err != nil {
		return nil, err
	}
	e.mu.Lock()
	delete(e.st.owners, allocKey(poolName, a))
	err := pool.Release(a)
	e.mu.Unlock()
	if err != nil {
		e.log.Warn("pool disagreed with the store on a release", "addr", a, "err", err)
	}
	return protocol.OK{}, nil
}
