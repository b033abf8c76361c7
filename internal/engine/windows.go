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
	release, err := e.hold(ctx, serviceLock(r.Service), handleLock("windows:"+r.Handle.ContainerID))
	if err != nil {
		return nil, err
	}
	defer release()
	var g *globalState
	var slice, cluster netip.Prefix
	var ip netip.Addr
	e.locked(func() {
		g, slice, cluster = e.st.global, e.st.slice, e.st.cluster
		switch {
		case g == nil || e.st.slicePool == nil:
			err = errUnprefixed{"no node slice assigned yet (setup_global_overlay first)"}
		case r.Handle.IP.IsValid():
			ip = r.Handle.IP.Unmap()
			err = e.st.slicePool.AllocateSpecific(ip)
		default:
			ip, err = e.st.slicePool.Allocate()
		}
	})
	if err != nil {
		return nil, err
	}
	releaseIP := func() { e.locked(func() { releaseIfFree(e.st.slicePool, ip) }) }
	network := hcnNetworkName(g.rec.Deployment)
	if err := e.cfg.HCN.EnsureNetwork(ctx, HCNNetwork{Name: network, Subnet: slice, Gateway: g.nodeIP}); err != nil {
		releaseIP()
		return nil, err
	}
	dnsServer, dnsDomain := e.containerDNS(r.Service, false, r.DNSServer, r.DNSDomain)
	guid, err := e.cfg.HCN.Attach(ctx, HCNAttach{
		Network: network, ContainerID: r.Handle.ContainerID, IP: ip, PrefixLen: slice.Bits(),
		Gateway: g.nodeIP, Cluster: cluster, DNSServer: dnsServer, DNSDomain: dnsDomain,
	})
	if err != nil {
		releaseIP()
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
		releaseIP()
		return nil, err
	}
	e.locked(func() {
		e.st.attach[key] = rec
		e.st.owners[allocKey(poolSlice, ip)] = attachOwner + key
	})
	return protocol.Attached{IP: ip, NamespaceGUID: guid, DNSServer: dnsServer, DNSDomain: dnsDomain}, nil
}

// detachWindows removes a Windows container's endpoint and namespace. The
// attachment is first marked as detaching in the store, then HNS is asked,
// then the record goes: a crash in between leaves a mark that reconcile
// finishes (finishDetaches), never an address held by nothing.
func (e *Engine) detachWindows(ctx context.Context, a *store.Attachment) error {
	if e.cfg.HCN == nil {
		return errors.New("no HCN on this platform")
	}
	if !a.Detaching {
		marked := *a
		marked.Detaching = true
		if err := e.store.Update(func(tx *store.Tx) error { return tx.PutAttachment(marked) }); err != nil {
			return err
		}
		e.locked(func() { e.st.attach[a.Key] = &marked })
		a = &marked
	}
	if err := e.cfg.HCN.Detach(ctx, a.HostLink); err != nil {
		return err
	}
	e.at("windows.detached")
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
	e.locked(func() {
		delete(e.st.attach, a.Key)
		delete(e.st.owners, allocKey(poolSlice, ip))
		releaseIfFree(e.st.slicePool, ip)
	})
	return nil
}
