package wg

import (
	"bytes"
	"net"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// needsCurrent reports whether planConfig needs the device's current state
// to rewrite cfg.
func needsCurrent(cfg wgtypes.Config) bool {
	return cfg.ReplacePeers || cfg.ListenPort != nil
}

// planConfig rewrites cfg into an equivalent configuration that does not
// disturb running sessions, given the device's current state:
//
//   - A ListenPort equal to the current non-zero port is dropped: wireguard-go
//     would close and reopen its sockets for it, losing packets in flight.
//   - ReplacePeers becomes an explicit removal of the peers that are not
//     listed. Listed peers that already exist are updated in place (allowed
//     IPs replaced, keepalive and preshared key reset to the given values or
//     zero), so they end up as a replace would leave them but keep their
//     handshake. A plain replace_peers would drop every session, which on a
//     restart with an adopted kernel device means a network-wide blip.
//
// cfg itself is not modified.
func planConfig(cfg wgtypes.Config, cur *wgtypes.Device) wgtypes.Config {
	out := cfg
	if cfg.ListenPort != nil && *cfg.ListenPort != 0 && *cfg.ListenPort == cur.ListenPort {
		out.ListenPort = nil
	}
	if !cfg.ReplacePeers {
		return out
	}
	out.ReplacePeers = false

	existing := make(map[wgtypes.Key]bool, len(cur.Peers))
	for _, p := range cur.Peers {
		existing[p.PublicKey] = true
	}
	listed := make(map[wgtypes.Key]bool, len(cfg.Peers))
	for _, p := range cfg.Peers {
		listed[p.PublicKey] = true
	}

	out.Peers = make([]wgtypes.PeerConfig, 0, len(cfg.Peers)+len(cur.Peers))
	// Removals first, so that a departing peer never holds an allowed IP
	// that a listed peer is about to claim.
	for _, p := range cur.Peers {
		if !listed[p.PublicKey] {
			out.Peers = append(out.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
		}
	}
	seen := make(map[wgtypes.Key]bool, len(cfg.Peers))
	for _, p := range cfg.Peers {
		first := !seen[p.PublicKey]
		seen[p.PublicKey] = true
		// Only the first mention of a surviving peer stands in for its
		// re-creation; later mentions apply on top, as they would after a
		// real replace.
		if first && !p.Remove && existing[p.PublicKey] {
			p.ReplaceAllowedIPs = true
			if p.PersistentKeepaliveInterval == nil {
				p.PersistentKeepaliveInterval = new(time.Duration(0))
			}
			if p.PresharedKey == nil {
				p.PresharedKey = new(wgtypes.Key{})
			}
		}
		out.Peers = append(out.Peers, p)
	}
	return out
}

// sortPeers orders peers by public key so that snapshots compare and diff
// cleanly; WireGuard reports them in hash-map order.
func sortPeers(peers []wgtypes.Peer) {
	slices.SortFunc(peers, func(a, b wgtypes.Peer) int {
		return bytes.Compare(a.PublicKey[:], b.PublicKey[:])
	})
}

// PeerChanges returns the peer configurations that take a device whose
// peers are cur to exactly the peers of want, writing nothing that already
// matches. want lists every peer the device should have, each with its
// full allowed-IP set and keepalive (nil: leave it); Endpoint is used only
// for a peer the device lacks, because for a peer it has, the endpoint in
// use may be one WireGuard learned (roaming, NAT) and better than ours.
//
//   - A peer of cur not in want is removed (removals come first, so a
//     departing peer never holds a prefix a listed peer claims).
//   - A peer of want not in cur is added whole.
//   - A peer in both is written only if something differs: allowed IPs it
//     lacks are appended, which keeps every route it has; only when it
//     holds one it should not is the set replaced (both backends replace
//     by removing and re-inserting, a moment without routes). A different
//     keepalive or preshared key is set in place. The session is kept.
//
// A pass over a device that already matches therefore writes nothing.
func PeerChanges(want []wgtypes.PeerConfig, cur []wgtypes.Peer) []wgtypes.PeerConfig {
	have := make(map[wgtypes.Key]*wgtypes.Peer, len(cur))
	for i := range cur {
		have[cur[i].PublicKey] = &cur[i]
	}
	listed := make(map[wgtypes.Key]bool, len(want))
	for _, p := range want {
		listed[p.PublicKey] = true
	}
	var out []wgtypes.PeerConfig
	for _, p := range cur {
		if !listed[p.PublicKey] {
			out = append(out, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
		}
	}
	for _, w := range want {
		c := have[w.PublicKey]
		if c == nil {
			w.Remove, w.UpdateOnly, w.ReplaceAllowedIPs = false, false, true
			out = append(out, w)
			continue
		}
		if pc, changed := peerUpdate(w, c); changed {
			out = append(out, pc)
		}
	}
	return out
}

// peerUpdate is the in-place update that takes c to w, and whether one is
// needed.
func peerUpdate(w wgtypes.PeerConfig, c *wgtypes.Peer) (wgtypes.PeerConfig, bool) {
	pc := wgtypes.PeerConfig{PublicKey: w.PublicKey, UpdateOnly: true}
	changed := false
	wantIPs, haveIPs := prefixSet(w.AllowedIPs), prefixSet(c.AllowedIPs)
	missing, extra := false, false
	for p := range wantIPs {
		if !haveIPs[p] {
			missing = true
		}
	}
	for p := range haveIPs {
		if !wantIPs[p] {
			extra = true
		}
	}
	switch {
	case extra:
		pc.ReplaceAllowedIPs, pc.AllowedIPs, changed = true, w.AllowedIPs, true
	case missing:
		for _, n := range w.AllowedIPs {
			if !haveIPs[canonicalIPNet(n)] {
				pc.AllowedIPs = append(pc.AllowedIPs, n)
			}
		}
		changed = true
	}
	if w.PersistentKeepaliveInterval != nil && *w.PersistentKeepaliveInterval != c.PersistentKeepaliveInterval {
		pc.PersistentKeepaliveInterval, changed = w.PersistentKeepaliveInterval, true
	}
	if w.PresharedKey != nil && *w.PresharedKey != c.PresharedKey {
		pc.PresharedKey, changed = w.PresharedKey, true
	}
	return pc, changed
}

// prefixSet keys allowed IPs by their canonical text (host bits cleared),
// as WireGuard stores them.
func prefixSet(ips []net.IPNet) map[string]bool {
	out := make(map[string]bool, len(ips))
	for _, n := range ips {
		out[canonicalIPNet(n)] = true
	}
	return out
}

func canonicalIPNet(n net.IPNet) string {
	m := net.IPNet{IP: n.IP.Mask(n.Mask), Mask: n.Mask}
	return m.String()
}
