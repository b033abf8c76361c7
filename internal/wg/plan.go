package wg

import (
	"bytes"
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
