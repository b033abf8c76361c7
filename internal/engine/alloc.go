package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

var errExhausted = ipam.ErrExhausted

// allocateIP hands out an address for the main daemon's own use: from the
// service's ranges when the service exists on this node (growing it when
// full), else from the node slice.
func (e *Engine) allocateIP(ctx context.Context, r protocol.AllocateIP) (protocol.Response, error) {
	if err := validName("service", r.Service); err != nil {
		return nil, err
	}
	switch r.Family {
	case "", protocol.FamilyIPv4, protocol.FamilyIPv6:
	default:
		return nil, fmt.Errorf("family %q: want %s or %s", truncate(r.Family), protocol.FamilyIPv4, protocol.FamilyIPv6)
	}
	release, err := e.hold(ctx, serviceLock(r.Service))
	if err != nil {
		return nil, err
	}
	defer release()

	var svc *serviceState
	var slice netip.Prefix
	var a netip.Addr
	poolName := servicePool(r.Service)
	second := false // the family asked for is the cluster's second
	e.locked(func() {
		svc, slice = e.st.services[r.Service], e.st.slice
		if r.Family != "" && slice.IsValid() && (r.Family == protocol.FamilyIPv4) != slice.Addr().Is4() {
			if e.st.fam2 == nil {
				err = fmt.Errorf("family %s: this node's cluster has no %s addresses", r.Family, r.Family)
				return
			}
			second, slice = true, e.st.fam2.slice
		}
		switch {
		case svc != nil && second:
			if svc.second == nil {
				err = fmt.Errorf("service %s has no %s range", r.Service, r.Family)
				return
			}
			a, err = svc.second.pool.Allocate()
		case svc != nil:
		case second:
			poolName = poolSlice2
			a, err = e.st.fam2.pool.Allocate()
		case e.st.slicePool != nil:
			poolName = poolSlice
			a, err = e.st.slicePool.Allocate()
		default:
			err = fmt.Errorf("service %s is not set up here and this node has no slice yet; call setup_global_overlay (or setup_service_overlay) first", r.Service)
		}
	})
	if svc != nil && !second && err == nil {
		a, err = e.allocateIn(svc)
	}
	if err != nil {
		if svc != nil {
			return nil, exhausted(err, svc.subnet, poolName)
		}
		return nil, exhausted(err, slice, poolName)
	}
	if err := e.store.Update(func(tx *store.Tx) error {
		return tx.PutAllocation(store.Allocation{Pool: poolName, Addr: a.String(), Owner: ownerAPI})
	}); err != nil {
		e.locked(func() { releaseIfFree(e.st.pool(poolName), a) })
		return nil, err
	}
	e.locked(func() { e.st.owners[allocKey(poolName, a)] = ownerAPI })
	return protocol.IP{IP: a}, nil
}

// releaseIP returns an address handed out by allocate_ip. It refuses
// addresses it never handed out, the node IP, gateways and the addresses of
// attached containers and guests, because freeing those would hand them out
// twice.
func (e *Engine) releaseIP(ctx context.Context, r protocol.ReleaseIP) (protocol.Response, error) {
	a := r.IP
	if !a.IsValid() {
		return nil, errors.New("ip is empty")
	}
	a = a.Unmap()
	var poolName string
	e.locked(func() { poolName, _, _ = e.st.allocationOf(a) })
	keys := []string{}
	svc, isSvc := strings.CutPrefix(poolName, "service:")
	if isSvc {
		keys = append(keys, serviceLock(svc))
	}
	release, err := e.hold(ctx, keys...)
	if err != nil {
		return nil, err
	}
	defer release()

	var pool addrPool
	var owner string
	e.locked(func() { poolName, pool, owner = e.st.allocationOf(a) })
	switch {
	case pool == nil:
		return nil, fmt.Errorf("%s is in none of this node's pools (node slice or service subnets)", a)
	case owner == "":
		return nil, fmt.Errorf("%s was never allocated here", a)
	case owner == ownerNode:
		return nil, fmt.Errorf("%s is this node's overlay IP; it is released by teardown_global_overlay", a)
	case owner == ownerGW:
		return nil, fmt.Errorf("%s is a gateway of service %s; it is released by teardown_service_overlay", a, strings.TrimPrefix(poolName, "service:"))
	case owner != ownerAPI:
		return nil, fmt.Errorf("%s is held by %s; detach it instead", a, strings.TrimPrefix(strings.TrimPrefix(owner, attachOwner), guestOwner))
	}
	if err := e.store.Update(func(tx *store.Tx) error { return tx.DeleteAllocation(poolName, a.String()) }); err != nil {
		return nil, err
	}
	e.locked(func() {
		delete(e.st.owners, allocKey(poolName, a))
		if sp, ok := pool.(*ipam.Pool); ok && sp.IsExcluded(a) {
			return // kept from an older store: the pool never had it
		}
		err = pool.Release(a)
	})
	if err != nil {
		e.log.Warn("pool disagreed with the store on a release", "addr", a, "err", err)
	}
	return protocol.OK{}, nil
}
