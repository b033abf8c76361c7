package engine

import (
	"net/netip"
	"sort"

	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// statusDevice is a device status reads after the state lock is released.
type statusDevice struct {
	svc  protocol.DedicatedServiceStatus
	dev  *device
	name string
}

// statusView is what status copies out of the desired state in one look.
type statusView struct {
	s         protocol.StatusSnapshot
	global    *device
	dedicated []statusDevice
}

// status reports what WireGuard and the desired state say right now. Keys
// are base64 and handshakes are Unix times (the reference reported hex keys
// and handshake ages).
//
// It takes the state lock twice, never across a device read: once for
// the desired state, and once after the reads to mark each peer's health
// and learned endpoint, looked up in place instead of copying thousands of
// entries under the lock.
func (e *Engine) status() protocol.Response {
	var v statusView
	e.locked(func() { v = e.statusViewLocked() })
	s := v.s
	sort.Slice(s.Attachments, func(i, j int) bool { return s.Attachments[i].IP.Less(s.Attachments[j].IP) })
	sort.Slice(s.NetnsAttachments, func(i, j int) bool { return s.NetnsAttachments[i].IP.Less(s.NetnsAttachments[j].IP) })
	sort.Slice(s.Guests, func(i, j int) bool { return s.Guests[i].ID < s.Guests[j].ID })

	if v.global != nil {
		if peers, port, at, err := v.global.peerStatuses(e.cfg.PeerStatsMaxAge); err == nil {
			s.Peers = peers
			s.WGPort = uint16(port)
			s.PeersRead = at.UnixMilli()
		} else {
			s.Warnings = append(s.Warnings, "reading "+v.global.Name()+": "+err.Error())
		}
	}
	s.PeerCount = uint32(len(s.Peers))
	for _, d := range v.dedicated {
		if d.dev != nil {
			if peers, _, _, err := d.dev.peerStatuses(e.cfg.PeerStatsMaxAge); err == nil {
				d.svc.PeerCount = uint32(len(peers))
				s.ServicePeers = append(s.ServicePeers, protocol.ServicePeerSet{Service: d.name, Peers: peers})
			}
		}
		s.DedicatedServices = append(s.DedicatedServices, d.svc)
	}
	e.locked(func() {
		e.markPeersLocked(scopeGlobal, s.Peers)
		for _, set := range s.ServicePeers {
			e.markPeersLocked(scopeService(set.Service), set.Peers)
		}
	})
	if e.cfg.EventsDropped != nil {
		s.EventsDropped = e.cfg.EventsDropped()
	}
	s.LastReconcile = e.lastReconcile.Load()
	s.ReconcileChanges = e.reconcileChanges.Load()
	e.statusHook(&s)
	return protocol.StatusResult{StatusSnapshot: s}
}

// statusViewLocked copies the desired state's part of status. Called with
// e.mu held.
func (e *Engine) statusViewLocked() statusView {
	st := e.st
	var v statusView
	s := &v.s
	*s = protocol.StatusSnapshot{
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
		if st.fam2 != nil {
			s.OverlayCIDRs = []string{st.cluster.String(), st.fam2.cluster.String()}
			s.SliceCIDRs = []string{st.slice.String(), st.fam2.slice.String()}
		}
	}
	if st.slicePool != nil {
		s.SlicePool = &protocol.PoolStatus{CIDR: st.slice.String(), Used: st.slicePool.Used(), Free: st.slicePool.Free()}
	}
	if g := st.global; g != nil {
		s.Interface = g.rec.Interface
		s.NodeIP = g.nodeIP
		s.PublicKey = st.key.PublicKey().String()
		s.Deployment = g.rec.Deployment
		s.WGPort = g.rec.WGPort
		s.KeySource = st.node.KeySource
		v.global = g.dev
		if g.nodeIP2.IsValid() {
			s.NodeIPs = []netip.Addr{g.nodeIP, g.nodeIP2}
		}
		if s.ExpectedPubkey != "" && s.ExpectedPubkey != s.PublicKey {
			s.PubkeyMismatch = true
			s.Warnings = append(s.Warnings, "set_local_wg_pubkey gave "+truncate(s.ExpectedPubkey)+" but the device's key is "+s.PublicKey+"; peers will reject our handshakes")
		}
	}
	if e.nodeConfigProblem != "" {
		s.Warnings = append(s.Warnings, NodeConfigFile+": "+e.nodeConfigProblem)
	}
	e.servicesStatusLocked(&v)
	for _, a := range st.attach {
		as := protocol.AttachStatus{Service: a.Service, IP: parseAddr(a.IP), GlobalIP: parseAddr(a.GlobalIP), HostLink: a.HostLink}
		switch a.Platform {
		case protocol.PlatformLinuxPID:
			as.Handle = protocol.LinuxPID(a.PID)
			s.Attachments = append(s.Attachments, as)
		case protocol.PlatformGuestManaged:
			s.Guests = append(s.Guests, protocol.GuestStatus{ID: a.GuestID, Service: a.Service, IP: parseAddr(a.IP), PublicKey: a.GuestPubkey})
		case protocol.PlatformNetns:
			s.NetnsAttachments = append(s.NetnsAttachments, netnsStatus(a))
		}
	}
	return v
}

func (e *Engine) servicesStatusLocked(v *statusView) {
	names := make([]string, 0, len(e.st.services))
	for n := range e.st.services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		svc := e.st.services[n]
		ss := protocol.ServiceStatus{
			Service: n, Mode: svc.rec.Mode, Bridge: svc.rec.Bridge, Subnet: svc.subnet.String(),
			Gateway: svc.gateway, Used: svc.Used(), Free: svc.Free(),
		}
		for _, r := range svc.extra {
			ss.Ranges = append(ss.Ranges, r.subnet.String())
		}
		if svc.second != nil {
			ss.Subnets = []string{svc.subnet.String(), svc.second.subnet.String()}
		}
		v.s.Services = append(v.s.Services, ss)
		if svc.dedicated() {
			v.dedicated = append(v.dedicated, statusDevice{
				svc: protocol.DedicatedServiceStatus{
					Service: n, Interface: svc.rec.Interface, PublicKey: svc.key.PublicKey().String(),
					ListenPort: svc.rec.WGPort, OverlayIP: svc.gateway, Subnet: svc.subnet.String(),
				},
				dev: svc.dev, name: n,
			})
		}
	}
}

func parseAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

// markPeersLocked adds what the desired state knows to the peers of one
// scope as read from its device: the monitor's health verdict and whether
// the endpoint is one the daemon learned. Called with e.mu held.
func (e *Engine) markPeersLocked(scope string, peers []protocol.PeerStatus) {
	healthy := make([]bool, len(peers)) // one allocation behind every Healthy
	var key []byte
	for i := range peers {
		ps := &peers[i]
		// A key built in place: map lookups by string(key) do not allocate.
		key = append(append(append(key[:0], scope...), '|'), ps.PublicKey...)
		if h, ok := e.health[string(key)]; ok {
			healthy[i] = h
			ps.Healthy = &healthy[i]
		}
		if c := e.st.peers[string(key)]; c != nil && c.LearnedEndpoint != "" && c.LearnedEndpoint == ps.Endpoint {
			ps.EndpointLearned = true
		}
	}
}
