package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// deviceSpec is everything one WireGuard device should be.
type deviceSpec struct {
	name   string
	key    wgtypes.Key
	port   uint16
	addrs  []netip.Prefix
	peers  []store.Peer
	routes []netip.Prefix // destinations routed into the device besides the addresses' own
	global bool           // the global device (gets the NAT-traversal bind)
}

var errNoBackend = errors.New("no WireGuard backend is configured in this daemon")

// openDevice creates (or adopts) a device and brings it to spec. On error
// nothing of it is left.
func (e *Engine) openDevice(ctx context.Context, spec deviceSpec) (wg.Device, error) {
	if e.cfg.WG == nil || e.cfg.Net == nil {
		return nil, errNoBackend
	}
	opts := wg.Options{MTU: e.cfg.MTU, Logger: e.log.With("device", spec.name)}
	if spec.global {
		opts.Bind = e.globalBind()
	}
	dev, err := e.cfg.WG.Open(spec.name, opts)
	if err != nil {
		return nil, err
	}
	if err := e.syncDevice(ctx, dev, spec, true); err != nil {
		dev.Close()
		return nil, err
	}
	if err := e.cfg.Net.SetAlias(spec.name, e.linkAlias("wireguard", spec.name)); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// syncDevice brings an open device to spec: key, port and exactly spec's
// peers (keeping the sessions of peers that stay), addresses, MTU, link up,
// and routes. fresh is true for a device just created: then every peer's
// endpoint is set; otherwise endpoints are only set for peers the device
// does not have, so an endpoint WireGuard learned (roaming, NAT) is never
// overwritten by a reconcile.
func (e *Engine) syncDevice(ctx context.Context, dev wg.Device, spec deviceSpec, fresh bool) error {
	have := map[wgtypes.Key]bool{}
	if !fresh {
		snap, err := dev.Snapshot()
		if err != nil {
			return err
		}
		for _, p := range snap.Peers {
			have[p.PublicKey] = true
		}
	}
	port := int(spec.port)
	cfg := wgtypes.Config{PrivateKey: &spec.key, ListenPort: &port, ReplacePeers: true}
	for _, p := range spec.peers {
		pc, err := e.peerConfig(ctx, p, !have[mustKey(p.PublicKey)])
		if err != nil {
			e.log.Warn("peer left out of the device", "device", spec.name, "peer", p.PublicKey, "err", err)
			continue
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	if err := dev.Configure(cfg); err != nil {
		return fmt.Errorf("configure %s: %w", spec.name, err)
	}
	if err := e.cfg.Net.SetMTU(spec.name, e.cfg.MTU); err != nil {
		return err
	}
	if err := e.cfg.Net.EnsureAddrs(spec.name, spec.addrs); err != nil {
		return err
	}
	if err := e.cfg.Net.SetUp(spec.name); err != nil {
		return err
	}
	return e.syncRoutes(spec.name, spec.routes)
}

// syncRoutes makes the routes through dev exactly want (besides the routes
// the kernel derives from the device's addresses).
func (e *Engine) syncRoutes(dev string, want []netip.Prefix) error {
	have, err := e.cfg.Net.Routes(dev)
	if err != nil {
		return err
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p.Masked()] = true
	}
	for _, r := range have {
		if !wanted[r.Dst.Masked()] {
			if err := e.cfg.Net.DeleteRoute(r); err != nil {
				return err
			}
		}
	}
	present := map[netip.Prefix]bool{}
	for _, r := range have {
		present[r.Dst.Masked()] = true
	}
	for p := range wanted {
		if present[p] {
			continue
		}
		if err := e.cfg.Net.EnsureRoute(linuxnet.Route{Dst: p, Dev: dev, Scope: linuxnet.ScopeLink}); err != nil {
			return err
		}
	}
	return nil
}

func mustKey(b64 string) wgtypes.Key {
	k, _ := wg.ParseKey(b64)
	return k
}

// peerConfig turns a stored peer into a full wgctrl peer configuration.
// withEndpoint includes the endpoint: the learned one when WireGuard
// learned one, else the requested one (resolved).
func (e *Engine) peerConfig(ctx context.Context, p store.Peer, withEndpoint bool) (wgtypes.PeerConfig, error) {
	key, err := wg.ParseKey(p.PublicKey)
	if err != nil {
		return wgtypes.PeerConfig{}, err
	}
	pc := wgtypes.PeerConfig{PublicKey: key, ReplaceAllowedIPs: true}
	for _, c := range p.AllowedIPs {
		pf, err := netip.ParsePrefix(c)
		if err != nil {
			return wgtypes.PeerConfig{}, fmt.Errorf("allowed IP %q: %w", c, err)
		}
		pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: pf.Addr().AsSlice(), Mask: net.CIDRMask(pf.Bits(), pf.Addr().BitLen())})
	}
	ka := time.Duration(p.Keepalive) * time.Second
	pc.PersistentKeepaliveInterval = &ka
	if withEndpoint {
		ep := p.LearnedEndpoint
		if ep == "" {
			ep = p.Endpoint
		}
		if ep != "" {
			ap, err := resolveEndpoint(ctx, ep)
			if err != nil {
				// A peer without an endpoint still works once it
				// contacts us; better than dropping it.
				e.log.Warn("peer endpoint unresolved; waiting for the peer to reach us", "peer", p.PublicKey, "err", err)
			} else {
				pc.Endpoint = net.UDPAddrFromAddrPort(ap)
				if ep == p.Endpoint {
					e.noteResolved(p.Scope, p.PublicKey, ap)
				}
			}
		}
	}
	return pc, nil
}

// peersOf returns the stored peers of a scope, sorted by key.
func (s *state) peersOf(scope string) []store.Peer {
	var out []store.Peer
	for _, p := range s.peers {
		if p.Scope == scope {
			out = append(out, *p)
		}
	}
	slices.SortFunc(out, func(a, b store.Peer) int {
		if a.PublicKey < b.PublicKey {
			return -1
		}
		if a.PublicKey > b.PublicKey {
			return 1
		}
		return 0
	})
	return out
}

// peerRoutes are the destinations that must be routed into a device for its
// peers: every allowed IP not already covered by the device's own
// addresses (for the global device, the cluster CIDR covers most) and not
// a default route (we never take over the host's default route).
func peerRoutes(peers []store.Peer, covered []netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, p := range peers {
		for _, c := range p.AllowedIPs {
			pf, err := netip.ParsePrefix(c)
			if err != nil || pf.Bits() == 0 {
				continue
			}
			pf = pf.Masked()
			if seen[pf] || coveredBy(pf, covered) {
				continue
			}
			seen[pf] = true
			out = append(out, pf)
		}
	}
	return out
}

func coveredBy(p netip.Prefix, by []netip.Prefix) bool {
	for _, c := range by {
		c = c.Masked()
		if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return true
		}
	}
	return false
}
