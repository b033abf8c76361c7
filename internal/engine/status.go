package engine

import (
	"net/netip"
	"sort"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// status reports what WireGuard and the desired state say right now. Keys
// are base64 and handshakes are Unix times (the reference reported hex keys
// and handshake ages).
func (e *Engine) status() protocol.Response {
	e.mu.Lock()
	st := e.st
	s := protocol.StatusSnapshot{
		Version:        version.Version,
		NodeID:         st.node.NodeID,
		ExpectedPubkey: st.node.ExpectedPubkey,
		ServiceCount:   uint32(len(st.services)),
		MTU:            e.cfg.MTU,
	}
	if e.cfg.WG != nil {
		s.WGBackend = e.cfg.WG.Kind()
	}
	if st.cluster.IsValid() {
		s.OverlayCIDR = st.cluster.String()
		s.SliceCIDR = st.slice.String()
	}
	if st.slicePool != nil {
		s.SlicePool = &protocol.PoolStatus{CIDR: st.slice.String(), Used: st.slicePool.Used(), Free: st.slicePool.Free()}
	}
	var globalDev wg.Device
	configured := map[string]*store.Peer{}
	if g := st.global; g != nil {
		s.Interface = g.rec.Interface
		s.NodeIP = g.nodeIP
		s.PublicKey = st.key.PublicKey().String()
		s.Deployment = g.rec.Deployment
		s.WGPort = g.rec.WGPort
		globalDev = g.dev
		s.KeySource = st.node.KeySource
		if s.ExpectedPubkey != "" && s.ExpectedPubkey != s.PublicKey {
			s.PubkeyMismatch = true
			s.Warnings = append(s.Warnings, "set_local_wg_pubkey gave "+s.ExpectedPubkey+" but the device's key is "+s.PublicKey+"; peers will reject our handshakes")
		}
	}
	if e.nodeConfigProblem != "" {
		s.Warnings = append(s.Warnings, NodeConfigFile+": "+e.nodeConfigProblem)
	}
	for k, p := range st.peers {
		configured[k] = p
	}
	type dedicated struct {
		svc  protocol.DedicatedServiceStatus
		dev  wg.Device
		name string
	}
	var ded []dedicated
	names := make([]string, 0, len(st.services))
	for n := range st.services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		svc := st.services[n]
		s.Services = append(s.Services, protocol.ServiceStatus{
			Service: n, Mode: svc.rec.Mode, Bridge: svc.rec.Bridge, Subnet: svc.subnet.String(),
			Gateway: svc.gateway, Used: svc.pool.Used(), Free: svc.pool.Free(),
		})
		if svc.dedicated() {
			ded = append(ded, dedicated{
				svc: protocol.DedicatedServiceStatus{
					Service: n, Interface: svc.rec.Interface, PublicKey: svc.key.PublicKey().String(),
					ListenPort: svc.rec.WGPort, OverlayIP: svc.gateway, Subnet: svc.subnet.String(),
				},
				dev: svc.dev, name: n,
			})
		}
	}
	for _, a := range st.attach {
		as := protocol.AttachStatus{Service: a.Service, IP: parseAddr(a.IP), GlobalIP: parseAddr(a.GlobalIP), HostLink: a.HostLink}
		switch a.Platform {
		case protocol.PlatformLinuxPID:
			as.Handle = protocol.LinuxPID(a.PID)
			s.Attachments = append(s.Attachments, as)
		case protocol.PlatformGuestManaged:
			s.Guests = append(s.Guests, protocol.GuestStatus{ID: a.GuestID, Service: a.Service, IP: parseAddr(a.IP), PublicKey: a.GuestPubkey})
		}
	}
	health := e.healthLocked()
	e.mu.Unlock()

	sort.Slice(s.Attachments, func(i, j int) bool { return s.Attachments[i].IP.Less(s.Attachments[j].IP) })
	sort.Slice(s.Guests, func(i, j int) bool { return s.Guests[i].ID < s.Guests[j].ID })

	if globalDev != nil {
		if snap, err := globalDev.Snapshot(); err == nil {
			s.Peers = peerStatuses(snap, scopeGlobal, configured, health)
			s.WGPort = uint16(snap.ListenPort)
		} else {
			s.Warnings = append(s.Warnings, "reading "+globalDev.Name()+": "+err.Error())
		}
	}
	s.PeerCount = uint32(len(s.Peers))
	for _, d := range ded {
		if d.dev != nil {
			if snap, err := d.dev.Snapshot(); err == nil {
				peers := peerStatuses(snap, scopeService(d.name), configured, health)
				d.svc.PeerCount = uint32(len(peers))
				s.ServicePeers = append(s.ServicePeers, protocol.ServicePeerSet{Service: d.name, Peers: peers})
			}
		}
		s.DedicatedServices = append(s.DedicatedServices, d.svc)
	}
	if e.cfg.EventsDropped != nil {
		s.EventsDropped = e.cfg.EventsDropped()
	}
	s.LastReconcile = e.lastReconcile.Load()
	s.ReconcileChanges = e.reconcileChanges.Load()
	e.statusHook(&s)
	return protocol.StatusResult{StatusSnapshot: s}
}

func parseAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

// peerStatuses renders what WireGuard reports for a device's peers.
func peerStatuses(snap *wgtypes.Device, scope string, configured map[string]*store.Peer, health map[string]bool) []protocol.PeerStatus {
	out := make([]protocol.PeerStatus, 0, len(snap.Peers))
	for _, p := range snap.Peers {
		pub := p.PublicKey.String()
		ps := protocol.PeerStatus{
			PublicKey:               pub,
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
		if h, ok := health[peerKey(scope, pub)]; ok {
			ps.Healthy = &h
		}
		if c := configured[peerKey(scope, pub)]; c != nil && c.LearnedEndpoint != "" && c.LearnedEndpoint == ps.Endpoint {
			ps.EndpointLearned = true
		}
		out = append(out, ps)
	}
	return out
}
