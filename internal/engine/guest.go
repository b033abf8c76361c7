package engine

import (
	"context"
	"net/netip"
	"slices"
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
// a first attach) and after, and the other peers that held the guest's
// addresses, before and after they lose them.
type guestChange struct {
	prev         *store.Attachment
	prevPeer     *store.Peer
	next         *store.Attachment
	peer         store.Peer
	losersBefore []store.Peer
	losersAfter  []store.Peer
	key          wgtypes.Key // the guest's private key: answered, never stored
	newAddr      bool        // the address was allocated by this attach
}

var errGuestNeedsGlobal = errUnprefixed{"guest-managed attach requires the global overlay to be set up first (call setup_global_overlay)"}

func (e *Engine) attachGuest(ctx context.Context, r protocol.AttachContainer) (protocol.Response, error) {
	if err := validName("guest id", r.Handle.ID); err != nil {
		return nil, err
	}
	var c guestChange
	release, err := e.holdLooking(func() (func(), error) { return e.lockGuest(ctx, handleKey(r.Handle), r, &c) })
	if err != nil {
		return nil, err
	}
	defer release()

	var g *globalState
	var nodeKey wgtypes.Key
	var clusters []netip.Prefix
	e.locked(func() { g, nodeKey, clusters = e.st.global, e.st.key, e.st.clusters() })
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

// lockGuest plans a guest attach into c and takes what it needs: the
// service and the handle, the guest's peer before and after (a repeated
// attach replaces the key), and the claims of its addresses (lockClaims),
// so a request giving one of them to another peer never writes back a
// guest peer this attach replaced, and a peer holding one loses it in this
// attach's commit. A first attach's claims are the addresses it allocates,
// so it allocates before it has the locks, and plans again when the guest
// was attached or detached meanwhile. The caller holds the topology.
func (e *Engine) lockGuest(ctx context.Context, key string, r protocol.AttachContainer, c *guestChange) (func(), error) {
	for {
		*c = guestChange{}
		e.locked(func() { c.prev, c.prevPeer = e.guestLocked(key) })
		if err := e.planGuest(c, key, r); err != nil {
			return nil, err
		}
		keys := append(guestLocks(c.prev), serviceLock(r.Service), handleLock(key), peerLock(scopeGlobal, c.peer.PublicKey))
		unlock, err := e.lockClaims(ctx, scopeGlobal, c.peer.PublicKey, c.peer.AllowedIPs, keys...)
		if err != nil {
			e.releaseGuestAddr(*c)
			return nil, err
		}
		var now *store.Attachment
		e.locked(func() { now, c.prevPeer = e.guestLocked(key) })
		if (now == nil) == (c.prev == nil) && (now == nil || *now == *c.prev) {
			e.takeGuestClaims(c)
			return unlock, nil
		}
		unlock()
		e.releaseGuestAddr(*c)
	}
}

// guestLocked is a copy of the guest attachment at key and of its peer, or
// nils. Called with e.mu held.
func (e *Engine) guestLocked(key string) (*store.Attachment, *store.Peer) {
	a := e.st.attach[key]
	if a == nil {
		return nil, nil
	}
	cp := *a
	p := e.st.peers[peerKey(scopeGlobal, a.GuestPubkey)]
	if p == nil {
		return &cp, nil
	}
	pp := *p
	pp.AllowedIPs = slices.Clone(p.AllowedIPs)
	return &cp, &pp
}

// takeGuestClaims records in c the peers that hold the guest's addresses,
// as they are and without them. The guest's own replaced peer is not one:
// it goes.
func (e *Engine) takeGuestClaims(c *guestChange) {
	c.losersAfter = e.claimLosers(scopeGlobal, c.peer.PublicKey, c.peer.AllowedIPs)
	if c.prev != nil {
		c.losersAfter = slices.DeleteFunc(c.losersAfter, func(p store.Peer) bool { return p.PublicKey == c.prev.GuestPubkey })
	}
	c.losersBefore = e.peersNamed(scopeGlobal, c.losersAfter)
}

// guestLocks are the locks of a guest's peer and of its addresses' claims
// (nil for an attachment that is not a guest's): a request giving one of
// those addresses to another peer takes them and rewrites the guest's peer.
func guestLocks(a *store.Attachment) []string {
	if a == nil || a.Platform != protocol.PlatformGuestManaged {
		return nil
	}
	keys := []string{peerLock(scopeGlobal, a.GuestPubkey)}
	for _, p := range guestPrefixes(a) {
		keys = append(keys, claimLock(scopeGlobal, p))
	}
	return keys
}

// guestPrefixes are the allowed IPs of a guest's peer: its addresses.
func guestPrefixes(a *store.Attachment) []string {
	var out []string
	for _, x := range guestAddrs(a) {
		out = append(out, netip.PrefixFrom(x.addr, x.addr.BitLen()).String())
	}
	return out
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
		if g := e.st.global; g == nil || g.dev == nil {
			err = errGuestNeedsGlobal
			return
		}
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
	c.next = &store.Attachment{
		Key: key, Platform: r.Handle.Platform, GuestID: r.Handle.ID, Service: r.Service, IP: ip.String(),
		GuestPubkey: guestKey.PublicKey().String(), DNSDomain: r.DNSDomain, CreatedUnix: time.Now().Unix(),
	}
	if ip2.IsValid() {
		c.next.IP2 = ip2.String()
	}
	c.peer = store.Peer{Scope: scopeGlobal, PublicKey: c.next.GuestPubkey, AllowedIPs: guestPrefixes(c.next), Guest: true}
	c.key = guestKey
	if r.DNSServer.IsValid() {
		c.next.DNSServer = r.DNSServer.String()
	}
	return nil
}

// commitGuest writes the guest's new peer and record, drops the old peer
// of a repeated attach and takes the guest's addresses from the peers
// that held them, in one transaction: there is never a moment without a
// committed record of the guest, nor one with two holders of an address.
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
		if err := writePeers(tx, scopeGlobal, c.peer.PublicKey, &c.peer, c.losersAfter); err != nil {
			return err
		}
		return tx.PutAttachment(*c.next)
	})
	if err != nil {
		return err
	}
	e.locked(func() {
		e.setGuestLocked(c.prev, c.next, &c.peer)
		for _, p := range c.losersAfter {
			e.st.putPeer(p)
		}
	})
	return nil
}

// setGuestLocked replaces a guest's record and peer in the state (next nil:
// the guest is gone; peer nil: it has none, the main daemon removed it).
// Called with e.mu held.
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
		if peer != nil {
			e.st.putPeer(*peer)
		}
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
		if err := writePeers(tx, scopeGlobal, c.peer.PublicKey, nil, c.losersBefore); err != nil {
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
		for _, p := range c.losersBefore {
			e.st.putPeer(p)
		}
		if c.prev == nil {
			for _, a := range guestAddrs(c.next) {
				delete(e.st.owners, allocKey(a.pool, a.addr))
			}
		}
	})
	e.releaseGuestAddr(c)
	peers := []wgtypes.PeerConfig{{PublicKey: mustKey(c.peer.PublicKey), Remove: true}}
	restore := c.losersBefore
	if c.prevPeer != nil {
		restore = append(slices.Clone(restore), *c.prevPeer)
	}
	for _, p := range restore {
		if pc, err := e.peerConfig(p, true); err == nil {
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
