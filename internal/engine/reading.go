package engine

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// reading is a device as this daemon last read it, with every change the
// daemon has written since then applied on top. Its configuration (peers,
// allowed IPs, keepalives, port) is therefore exact, and only what the
// device changes by itself — handshakes, byte counters, roamed endpoints —
// is as old as the read. status answers from it: reading a device costs a
// full UAPI dump (about 50 ms at 5,000 peers, mostly text formatting in
// wireguard-go), and the health monitor reads every device anyway.
//
// Only devices of staleMinPeers peers or more are answered from the
// reading: below that a read costs a few milliseconds, and status stays
// live (a ping's handshake shows in the next status). How old a reading
// of a bigger device may be is set by what a read costs (staleFactor
// reads' worth): one of 5,000 peers is answered from a reading up to about
// a second old instead of spending most of each status reading it. The
// count, not the measured cost, decides, so a busy machine does not turn
// a small mesh's status stale.
type reading struct {
	mu    sync.Mutex
	at    time.Time     // of the last read kept; zero: nothing to answer from
	took  time.Duration // what the last read cost
	port  int
	peers map[wgtypes.Key]*wgtypes.Peer
	// owner of each allowed IP: WireGuard gives a prefix to one peer
	// only, taking it from another that had it.
	owner map[netip.Prefix]wgtypes.Key
	// While reads are in flight, the changes written meanwhile: a read
	// may or may not have seen them, so they are applied again on top of
	// it (applying a change twice leaves what applying it once does).
	readers int
	during  []wgtypes.Config
	// statuses are the peers as status shows them, sorted by key: built
	// when first asked for and dropped on every change, so back-to-back
	// status requests of a big mesh format each peer's key, endpoint and
	// allowed IPs once per reading instead of once per request.
	statuses []protocol.PeerStatus
}

// begin marks a read starting; finish is given the token.
func (r *reading) begin() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.readers++
	return len(r.during)
}

// finish keeps snap, read at at, as the new base, with the changes
// written since begin (token) applied on top; a failed read (snap nil)
// keeps what there was.
func (r *reading) finish(token int, snap *wgtypes.Device, at time.Time, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.readers--
	if snap != nil && !at.Before(r.at) {
		r.took = took
		r.port = snap.ListenPort
		r.peers = make(map[wgtypes.Key]*wgtypes.Peer, len(snap.Peers))
		r.owner = make(map[netip.Prefix]wgtypes.Key, len(snap.Peers))
		for i := range snap.Peers {
			p := clonePeer(snap.Peers[i])
			r.peers[p.PublicKey] = &p
			for _, n := range p.AllowedIPs {
				if pre, ok := prefixOf(n); ok {
					r.owner[pre] = p.PublicKey
				}
			}
		}
		for _, cfg := range r.during[token:] {
			r.applyLocked(cfg)
		}
		r.at = at
		r.statuses = nil
	}
	if r.readers == 0 {
		r.during = r.during[:0]
	}
}

// apply records a change written to the device.
func (r *reading) apply(cfg wgtypes.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.readers > 0 {
		r.during = append(r.during, cfg)
	}
	r.applyLocked(cfg)
}

// endpoint is a peer's endpoint as the reading has it: as last read, or
// as a change written since set it. ok is false when the reading has no
// such peer, or nothing to answer from.
func (r *reading) endpoint(pub wgtypes.Key) (ap netip.AddrPort, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.peers[pub]
	if p == nil {
		return netip.AddrPort{}, false
	}
	if p.Endpoint != nil {
		a := p.Endpoint.AddrPort()
		ap = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	}
	return ap, true
}

// forget drops the reading: after a write that failed half-way nobody
// knows what the device holds until it is read again.
func (r *reading) forget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.at = time.Time{}
	r.peers, r.owner, r.statuses = nil, nil, nil
}

func (r *reading) applyLocked(cfg wgtypes.Config) {
	if r.peers == nil {
		return
	}
	r.statuses = nil
	if cfg.ListenPort != nil {
		r.port = *cfg.ListenPort
	}
	if cfg.ReplacePeers {
		clear(r.peers)
		clear(r.owner)
	}
	for _, pc := range cfg.Peers {
		p := r.peers[pc.PublicKey]
		if pc.Remove {
			if p != nil {
				r.dropAllowedLocked(p, p.AllowedIPs)
				delete(r.peers, pc.PublicKey)
			}
			continue
		}
		if p == nil {
			if pc.UpdateOnly {
				continue
			}
			p = &wgtypes.Peer{PublicKey: pc.PublicKey, ProtocolVersion: 1}
			r.peers[pc.PublicKey] = p
		}
		if pc.Endpoint != nil {
			e := *pc.Endpoint
			p.Endpoint = &e
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.ReplaceAllowedIPs {
			r.dropAllowedLocked(p, p.AllowedIPs)
			p.AllowedIPs = nil
		}
		for _, n := range pc.AllowedIPs {
			pre, ok := prefixOf(n)
			if !ok {
				continue
			}
			if was, ok := r.owner[pre]; ok && was != p.PublicKey {
				if other := r.peers[was]; other != nil {
					other.AllowedIPs = slices.DeleteFunc(other.AllowedIPs, func(m net.IPNet) bool { q, _ := prefixOf(m); return q == pre })
				}
			}
			if r.owner[pre] != p.PublicKey || !slices.ContainsFunc(p.AllowedIPs, func(m net.IPNet) bool { q, _ := prefixOf(m); return q == pre }) {
				p.AllowedIPs = append(p.AllowedIPs, n)
			}
			r.owner[pre] = p.PublicKey
		}
	}
}

func (r *reading) dropAllowedLocked(p *wgtypes.Peer, nets []net.IPNet) {
	for _, n := range nets {
		if pre, ok := prefixOf(n); ok && r.owner[pre] == p.PublicKey {
			delete(r.owner, pre)
		}
	}
}

const (
	// staleFactor is how many reads' worth of time a reading stays usable.
	staleFactor = 20
	// staleMinPeers is the size from which status answers from the
	// reading at all.
	staleMinPeers = 1000
)

// recentStatuses returns the peers as status shows them, sorted by key as
// a read is (a copy the caller owns), the listen port, and when the
// counters were read, if the reading is at most staleFactor reads' time
// and maxAge old.
func (r *reading) recentStatuses(maxAge time.Duration, now time.Time) ([]protocol.PeerStatus, int, time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.freshLocked(maxAge, now) {
		return nil, 0, time.Time{}, false
	}
	if r.statuses == nil {
		peers := make([]*wgtypes.Peer, 0, len(r.peers))
		for _, p := range r.peers {
			peers = append(peers, p)
		}
		slices.SortFunc(peers, func(a, b *wgtypes.Peer) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
		r.statuses = make([]protocol.PeerStatus, len(peers))
		for i, p := range peers {
			r.statuses[i] = peerStatus(p)
		}
	}
	return slices.Clone(r.statuses), r.port, r.at, true
}

func (r *reading) freshLocked(maxAge time.Duration, now time.Time) bool {
	return r.peers != nil && !r.at.IsZero() && now.Sub(r.at) <= min(maxAge, staleFactor*r.took)
}

// big says whether the device is big enough to be answered from the
// reading (staleMinPeers).
func (r *reading) big() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.peers) >= staleMinPeers
}

// peerStatus renders what WireGuard reports for one peer.
func peerStatus(p *wgtypes.Peer) protocol.PeerStatus {
	ps := protocol.PeerStatus{
		PublicKey:               p.PublicKey.String(),
		RxBytes:                 uint64(max(p.ReceiveBytes, 0)),
		TxBytes:                 uint64(max(p.TransmitBytes, 0)),
		PersistentKeepaliveSecs: uint64(p.PersistentKeepaliveInterval.Seconds()),
	}
	if p.Endpoint != nil {
		ps.Endpoint = p.Endpoint.String()
	}
	ips := make([]string, 0, len(p.AllowedIPs))
	for _, n := range p.AllowedIPs {
		ips = append(ips, n.String())
	}
	ps.AllowedIPs = strings.Join(ips, ",")
	if !p.LastHandshakeTime.IsZero() {
		ps.LastHandshakeUnixSecs = p.LastHandshakeTime.Unix()
	}
	return ps
}

func clonePeer(p wgtypes.Peer) wgtypes.Peer {
	p.AllowedIPs = slices.Clone(p.AllowedIPs)
	if p.Endpoint != nil {
		e := *p.Endpoint
		p.Endpoint = &e
	}
	return p
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 32 {
		a = a.Unmap()
	}
	if bits == 0 || a.BitLen() != bits {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}
