package engine

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// VM guests that run their own WireGuard (guest_managed): an address from
// the node slice routed into the global device, a fresh keypair, and the
// guest as a global peer.

// guestChange is one guest attach: the attachment and peer before (nil on
// a first attach) and after.
type guestChange struct {
	prev     *store.Attachment
	prevPeer *store.Peer
	next     *store.Attachment
	peer     store.Peer
	key      wgtypes.Key // the guest's private key: answered, never stored
	newAddr  bool        // the address was allocated by this attach
}

func (e *Engine) attachGuest(ctx context.Context, r protocol.AttachContainer) (protocol.Response, error) {
	if err := validName("guest id", r.Handle.ID); err != nil {
		return nil, err
	}
	key := handleKey(r.Handle)
	release, err := e.hold(ctx, serviceLock(r.Service), handleLock(key))
	if err != nil {
		return nil, err
	}
	defer release()

	var g *globalState
	var nodeKey wgtypes.Key
	var clusters []netip.Prefix
	var c guestChange
	e.locked(func() {
		g, nodeKey, clusters = e.st.global, e.st.key, e.st.clusters()
		if a := e.st.attach[key]; a != nil {
			cp := *a
			c.prev = &cp
			if p := e.st.peers[peerKey(scopeGlobal, a.GuestPubkey)]; p != nil {
				pp := *p
				c.prevPeer = &pp
			}
		}
	})
	if g == nil || g.dev == nil {
		return nil, errUnprefixed{"guest-managed attach requires the global overlay to be set up first (call setup_global_overlay)"}
	}
	if err := e.planGuest(&c, key, r); err != nil {
		return nil, err
	}
	if err := e.commitGuest(c); err != nil {
		e.releaseGuestAddr(c)
		return nil, err
	}
	if err := e.applyGuest(g.dev, c); err != nil {
		e.undoGuest(g.dev, c)
		return nil, err
	}
	dnsServer, dnsDomain := e.containerDNS(r.Service, true, r.DNSServer, r.DNSDomain)
	allowed := make([]string, len(clusters))
	for i, c := range clusters {
		allowed[i] = c.String()
	}
	gc := protocol.GuestConfig{
		OverlayIP:  netip.MustParseAddr(c.next.IP),
		PrefixLen:  uint8(clusters[0].Bits()),
		PrivateKey: c.key.String(),
		PublicKey:  c.peer.PublicKey,
		ListenPort: g.rec.WGPort,
		Peers: []protocol.PeerSpec{{
			PublicKey:               nodeKey.PublicKey().String(),
			Endpoint:                netip.AddrPortFrom(g.nodeIP, g.rec.WGPort).String(),
			AllowedIPs:              strings.Join(allowed, ","),
			PersistentKeepaliveSecs: 25,
		}},
		DNSServer: dnsServer,
		DNSDomain: dnsDomain,
	}
	if c.next.IP2 != "" {
		gc.OverlayIPs = []netip.Addr{gc.OverlayIP, netip.MustParseAddr(c.next.IP2)}
	}
	return gc, nil
}

// guestAddrs are the addresses a guest holds in the node slices.
func guestAddrs(a *store.Attachment) []pooledAddr {
	var out []pooledAddr
	for _, x := range []struct{ pool, addr string }{{poolSlice, a.IP}, {poolSlice2, a.IP2}} {
		if ip, err := netip.ParseAddr(x.addr); err == nil {
			out = append(out, pooledAddr{x.pool, ip})
		}
	}
	return out
}

// planGuest picks the guest's key and address: a repeated attach rotates
// the key and keeps the address.
func (e *Engine) planGuest(c *guestChange, key string, r protocol.AttachContainer) error {
	guestKey, err := wg.GenerateKey()
	if err != nil {
		return err
	}
	var ip, ip2 netip.Addr
	var slice netip.Prefix
	e.locked(func() {
		slice = e.st.slice
		if c.prev != nil {
			ip, err = netip.ParseAddr(c.prev.IP)
			ip2, _ = netip.ParseAddr(c.prev.IP2)
			return
		}
		if ip, err = e.st.slicePool.Allocate(); err != nil {
			return
		}
		if f := e.st.fam2; f != nil {
			if ip2, err = f.pool.Allocate(); err != nil {
				slice = f.slice
				e.st.slicePool.Release(ip)
				return
			}
		}
		c.newAddr = true
	})
	if err != nil {
		return exhausted(err, slice, poolSlice)
	}
	c.peer = store.Peer{
		Scope:      scopeGlobal,
		PublicKey:  guestKey.PublicKey().String(),
		AllowedIPs: []string{netip.PrefixFrom(ip, ip.BitLen()).String()},
		Guest:      true,
	}
	c.next = &store.Attachment{
		Key: key, Platform: r.Handle.Platform, GuestID: r.Handle.ID, Service: r.Service, IP: ip.String(),
		GuestPubkey: c.peer.PublicKey, DNSDomain: r.DNSDomain, CreatedUnix: time.Now().Unix(),
	}
	if ip2.IsValid() {
		c.next.IP2 = ip2.String()
		c.peer.AllowedIPs = append(c.peer.AllowedIPs, netip.PrefixFrom(ip2, ip2.BitLen()).String())
	}
	c.key = guestKey
	if r.DNSServer.IsValid() {
		c.next.DNSServer = r.DNSServer.String()
	}
	return nil
}

// commitGuest writes the guest's new peer and record, and drops the old
// peer of a repeated attach, in one transaction: there is never a moment
// without a committed record of the guest.
func (e *Engine) commitGuest(c guestChange) error {
	err := e.store.Update(func(tx *store.Tx) error {
		if c.prev != nil {
			if err := tx.DeletePeer(scopeGlobal, c.prev.GuestPubkey); err != nil {
				return err
			}
		}
		for _, a := range guestAddrs(c.next) {
			if err := tx.PutAllocation(store.Allocation{Pool: a.pool, Addr: a.addr.String(), Owner: guestOwner + c.next.GuestID}); err != nil {
				return err
			}
		}
		if err := tx.PutPeer(c.peer); err != nil {
			return err
		}
		return tx.PutAttachment(*c.next)
	})
	if err != nil {
		return err
	}
	e.locked(func() { e.setGuestLocked(c.prev, c.next, &c.peer) })
	return nil
}

// setGuestLocked replaces a guest's record and peer in the state (next nil:
// the guest is gone). Called with e.mu held.
func (e *Engine) setGuestLocked(prev, next *store.Attachment, peer *store.Peer) {
	if prev != nil {
		e.st.dropPeer(scopeGlobal, prev.GuestPubkey)
		delete(e.st.attach, prev.Key)
	}
	if next != nil {
		e.st.attach[next.Key] = next
		for _, a := range guestAddrs(next) {
			e.st.owners[allocKey(a.pool, a.addr)] = guestOwner + next.GuestID
		}
		e.st.putPeer(*peer)
	}
}

// applyGuest registers the new key on the global device and removes the
// old one, under the device's lock.
func (e *Engine) applyGuest(dev *device, c guestChange) error {
	pc, err := e.peerConfig(c.peer, false)
	if err != nil {
		return err
	}
	peers := []wgtypes.PeerConfig{pc}
	if c.prev != nil {
		peers = append([]wgtypes.PeerConfig{{PublicKey: mustKey(c.prev.GuestPubkey), Remove: true}}, peers...)
	}
	return e.applyPeers(dev, scopeGlobal, peers, &c.peer, c.prevPeer)
}

// undoGuest takes a guest attach the device refused back out of the store
// and the state, and puts the device back as it was.
func (e *Engine) undoGuest(dev *device, c guestChange) {
	err := e.store.Update(func(tx *store.Tx) error {
		if err := tx.DeletePeer(scopeGlobal, c.peer.PublicKey); err != nil {
			return err
		}
		if c.prev == nil {
			for _, a := range guestAddrs(c.next) {
				if err := tx.DeleteAllocation(a.pool, a.addr.String()); err != nil {
					return err
				}
			}
			return tx.DeleteAttachment(c.next.Key)
		}
		if c.prevPeer != nil {
			if err := tx.PutPeer(*c.prevPeer); err != nil {
				return err
			}
		}
		return tx.PutAttachment(*c.prev)
	})
	if err != nil {
		e.log.Error("could not take back a guest attach the device refused; reconcile applies the stored one", "guest", c.next.GuestID, "err", err)
		return
	}
	e.locked(func() {
		e.setGuestLocked(c.next, c.prev, c.prevPeer)
		if c.prev == nil {
			for _, a := range guestAddrs(c.next) {
				delete(e.st.owners, allocKey(a.pool, a.addr))
			}
		}
	})
	e.releaseGuestAddr(c)
	peers := []wgtypes.PeerConfig{{PublicKey: mustKey(c.peer.PublicKey), Remove: true}}
	if c.prevPeer != nil {
		if pc, err := e.peerConfig(*c.prevPeer, true); err == nil {
			peers = append(peers, pc)
		}
	}
	if err := e.applyPeers(dev, scopeGlobal, peers, c.prevPeer, &c.peer); err != nil {
		e.log.Warn("restoring the global device after a failed guest attach; reconcile retries", "guest", c.next.GuestID, "err", err)
	}
}

// releaseGuestAddr returns an address a failed first attach allocated.
func (e *Engine) releaseGuestAddr(c guestChange) {
	if !c.newAddr {
		return
	}
	e.locked(func() {
		for _, a := range guestAddrs(c.next) {
			releaseIfFree(e.st.pool(a.pool), a.addr)
		}
	})
}

// detachGuest removes a guest's peer and releases its address.
func (e *Engine) detachGuest(a *store.Attachment) error {
	addrs := guestAddrs(a)
	err := e.store.Update(func(tx *store.Tx) error {
		for _, x := range addrs {
			if err := tx.DeleteAllocation(x.pool, x.addr.String()); err != nil {
				return err
			}
		}
		if err := tx.DeletePeer(scopeGlobal, a.GuestPubkey); err != nil {
			return err
		}
		return tx.DeleteAttachment(a.Key)
	})
	if err != nil {
		return err
	}
	var dev *device
	var prev *store.Peer
	e.locked(func() {
		prev = e.st.peers[peerKey(scopeGlobal, a.GuestPubkey)]
		e.setGuestLocked(a, nil, nil)
		for _, x := range addrs {
			delete(e.st.owners, allocKey(x.pool, x.addr))
			releaseIfFree(e.st.pool(x.pool), x.addr)
		}
		if e.st.global != nil {
			dev = e.st.global.dev
		}
	})
	if dev == nil {
		return nil
	}
	if k, err := wg.ParseKey(a.GuestPubkey); err == nil {
		if err := e.applyPeers(dev, scopeGlobal, []wgtypes.PeerConfig{{PublicKey: k, Remove: true}}, nil, prev); err != nil {
			e.log.Warn("removing guest peer failed; reconcile retries", "guest", a.GuestID, "err", err)
		}
	}
	return nil
}
