package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// hcnNetworkName is the node's Internal network for a deployment.
func hcnNetworkName(deployment string) string { return deployment + "-overlay" }

// attachWindows attaches a Windows container through HCN: an address from
// the node slice (the handle's ip when the main daemon reserved one), an
// endpoint on the node's Internal network, and a namespace whose GUID the
// answer carries. Detach is keyed by that GUID (the main daemon passes it
// as container_id).
func (e *Engine) attachWindows(ctx context.Context, r protocol.AttachContainer) (protocol.Response, error) {
	if r.Handle.ContainerID == "" || len(r.Handle.ContainerID) > 128 {
		return nil, fmt.Errorf("container_id must be 1-128 bytes")
	}
	e.global.RLock()
	defer e.global.RUnlock()
	unlock := e.locks.lock("service:"+r.Service, "handle:windows:"+r.Handle.ContainerID)
	defer unlock()
	e.mu.Lock()
	g := e.st.global
	slice, cluster := e.st.slice, e.st.cluster
	var ip netip.Addr
	var err error
	if g == nil || e.st.slicePool == nil {
		err = errUnprefixed{"no node slice assigned yet (setup_global_overlay first)"}
	} else if r.Handle.IP.IsValid() {
		ip = r.Handle.IP.Unmap()
		err = e.st.slicePool.AllocateSpecific(ip)
	} else {
		ip, err = e.st.slicePool.Allocate()
	}
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	release := func() {
		e.mu.Lock()
		releaseIfFree(e.st.slicePool, ip)
		e.mu.Unlock()
	}
	network := hcnNetworkName(g.rec.Deployment)
	if err := e.cfg.HCN.EnsureNetwork(ctx, HCNNetwork{Name: network, Subnet: slice, Gateway: g.nodeIP}); err != nil {
		release()
		return nil, err
	}
	dnsServer, dnsDomain := e.containerDNS(r.Service, false, r.DNSServer, r.DNSDomain)
	guid, err := e.cfg.HCN.Attach(ctx, HCNAttach{
		Network: network, ContainerID: r.Handle.ContainerID, IP: ip, PrefixLen: slice.Bits(),
		Gateway: g.nodeIP, Cluster: cluster, DNSServer: dnsServer, DNSDomain: dnsDomain,
	})
	if err != nil {
		release()
		return nil, err
	}
	key := protocol.PlatformWindowsContainer + ":" + guid
	rec := &store.Attachment{
		Key: key, Platform: protocol.PlatformWindowsContainer, GuestID: r.Handle.ContainerID,
		Service: r.Service, IP: ip.String(), HostLink: guid, DNSDomain: dnsDomain, CreatedUnix: time.Now().Unix(),
	}
	err = e.store.Update(func(tx *store.Tx) error {
		if err := tx.PutAllocation(store.Allocation{Pool: poolSlice, Addr: rec.IP, Owner: attachOwner + key}); err != nil {
			return err
		}
		return tx.PutAttachment(*rec)
	})
	if err != nil {
		e.cfg.HCN.Detach(ctx, guid)
		release()
		return nil, err
	}
	e.mu.Lock()
	e.st.attach[key] = rec
	e.st.owners[allocKey(poolSlice, ip)] = attachOwner + key
	e.mu.Unlock()
	return protocol.Attached{IP: ip, NamespaceGUID: guid, DNSServer: dnsServer, DNSDomain: dnsDomain}, nil
}

// detachWindows removes a Windows container's endpoint and namespace.
func (e *Engine) detachWindows(ctx context.Context, a *store.Attachment) error {
	if e.cfg.HCN == nil {
		return errors.New("no HCN on this platform")
	}
	if err := e.cfg.HCN.Detach(ctx, a.HostLink); err != nil {
		return err
	}
	ip, _ := netip.ParseAddr(a.IP)
	err := e.store.Update(func(tx *store.Tx) error {
		if err := tx.DeleteAllocation(poolSlice, a.IP); err != nil {
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
	releaseIfFree(e.st.slicePool, ip)
	e.mu.Unlock()
	return nil
}
