package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Daemon: the daemon answers, and it has put its state back. It serves
// only after restoring everything, so an answer means restored; a reconcile
// pass on record and no warnings mean nothing was left over.
func Daemon(s protocol.StatusSnapshot, err error, socket string, now time.Time) Result {
	r := Result{Check: "daemon"}
	if err != nil {
		r.Status, r.Message = Fail, "zlayer-overlayd does not answer: "+err.Error()
		r.Fix = "start it (systemctl start zlayer-overlayd) and read why it stopped (journalctl -u zlayer-overlayd); docs/operations.md, \"Recovery\", lists what a refused start means"
		if socket != "" {
			r.Fix += "; or point overlayctl at its socket (--socket, --data-dir; looked at " + socket + ")"
		}
		return r
	}
	r.Status = OK
	r.Message = "zlayer-overlayd " + s.Version + " answers; state restored"
	if s.LastReconcile > 0 {
		r.Message += fmt.Sprintf(", last reconcile %s ago", Age(now, s.LastReconcile))
	}
	if s.Interface == "" {
		r.Status = Warn
		r.Message += "; no global overlay yet"
		r.Fix = "the main daemon sets it up with setup_global_overlay when it starts; restart it if it runs"
	}
	if len(s.Warnings) > 0 {
		r.Status = Warn
		r.Message += "; the daemon warns: " + strings.Join(s.Warnings, "; ")
		r.Fix = "each warning says what to do; docs/operations.md explains them"
	}
	return r
}

// WireGuard: the overlay runs on kernel WireGuard, or on wireguard-go with
// a TUN device; without the daemon, whether either is possible.
func WireGuard(h Host, s protocol.StatusSnapshot, up bool) Result {
	r := Result{Check: "wireguard"}
	loaded, available, modErr := h.Module("wireguard")
	tun := h.DeviceNode("/dev/net/tun")
	switch {
	case up && s.WGBackend == "kernel":
		r.Status, r.Message = OK, "kernel WireGuard"
	case up && s.WGBackend == "userspace":
		r.Status, r.Message = OK, "userspace WireGuard (wireguard-go on a TUN device)"
		if errors.Is(modErr, ErrUnsupported) || loaded || available {
			return r
		}
		r.Message += "; the kernel has no WireGuard module, which would cost less CPU per byte"
	case loaded || available:
		r.Status, r.Message = OK, "the kernel has WireGuard"
	case tun:
		r.Status, r.Message = OK, "no kernel WireGuard; /dev/net/tun is there for wireguard-go"
	case errors.Is(modErr, ErrUnsupported):
		r.Status, r.Message = Skip, "cannot inspect the kernel on this platform"
	default:
		r.Status, r.Message = Fail, "neither kernel WireGuard nor /dev/net/tun: no overlay device can be made"
		r.Fix = "install a kernel with WireGuard (modprobe wireguard) or load the tun module (modprobe tun)"
	}
	return r
}

// Bridges: the kernel can make bridges, and every service's bridge exists.
func Bridges(h Host, s protocol.StatusSnapshot, up bool) Result {
	r := Result{Check: "bridge"}
	var missing []string
	n := 0
	for _, svc := range s.Services {
		if svc.Bridge == "" {
			continue
		}
		n++
		if _, err := h.LinkMTU(svc.Bridge); errors.Is(err, ErrUnsupported) {
			return Result{Check: "bridge", Status: Skip, Message: "cannot inspect links on this platform"}
		} else if err != nil {
			missing = append(missing, svc.Bridge+" (service "+svc.Service+")")
		}
	}
	if len(missing) > 0 {
		r.Status = Fail
		r.Message = "bridges missing: " + strings.Join(missing, ", ") + "; their containers are cut off"
		r.Fix = "the daemon's next reconcile recreates them (every --reconcile-interval, 30s by default); if they stay missing, read its log (journalctl -u zlayer-overlayd)"
		return r
	}
	if n > 0 {
		r.Status, r.Message = OK, count(n, "service bridge")+" present"
		return r
	}
	loaded, available, err := h.Module("bridge")
	switch {
	case errors.Is(err, ErrUnsupported):
		r.Status, r.Message = Skip, "cannot inspect the kernel on this platform"
	case loaded || available:
		r.Status, r.Message = OK, "the kernel has bridges (no service overlay yet)"
	default:
		r.Status, r.Message = Fail, "the kernel has no bridge module: service overlays cannot be set up"
		r.Fix = "install the kernel's bridge module (modprobe bridge)"
	}
	return r
}

// NFTables: our table is built without error when the daemon keeps one.
func NFTables(h Host, s protocol.StatusSnapshot) Result {
	r := Result{Check: "nftables"}
	fw := s.Firewall
	if fw == nil {
		r.Status, r.Message = Skip, "the daemon keeps no firewall (--firewall=false, or not Linux)"
		return r
	}
	if fw.LastError != "" {
		r.Status, r.Message = Fail, "our table "+fw.Table+" could not be built: "+fw.LastError
		r.Fix = "the kernel needs nf_tables (modprobe nf_tables) and the daemon CAP_NET_ADMIN; it retries on every reconcile"
		return r
	}
	if _, err := h.NFTables(); err != nil && !errors.Is(err, ErrUnsupported) {
		r.Status, r.Message = Fail, "cannot read nftables: "+err.Error()
		r.Fix = "run overlayctl doctor as root; a kernel without nf_tables needs it (modprobe nf_tables)"
		return r
	}
	r.Status = OK
	if s.Interface == "" {
		r.Message = "nftables works; our table " + fw.Table + " comes with the global overlay"
	} else {
		r.Message = fmt.Sprintf("table inet %s has %d rules", fw.Table, fw.Rules)
	}
	return r
}

// families reports the address families the overlays use.
func families(s protocol.StatusSnapshot) (v4, v6 bool) {
	note := func(cidr string) {
		if p, err := netip.ParsePrefix(cidr); err == nil {
			if p.Addr().Is4() {
				v4 = true
			} else {
				v6 = true
			}
		}
	}
	note(s.OverlayCIDR)
	for _, c := range s.OverlayCIDRs { // dual-stack: every family
		note(c)
	}
	for _, svc := range s.Services {
		note(svc.Subnet)
		for _, sub := range svc.Subnets {
			note(sub)
		}
	}
	return v4, v6
}

// Forwarding: IP forwarding is on for every family the overlays use;
// without it nothing leaves a bridge for the overlay or the world.
func Forwarding(h Host, s protocol.StatusSnapshot) Result {
	r := Result{Check: "forwarding"}
	v4, v6 := families(s)
	if !v4 && !v6 {
		r.Status, r.Message = OK, "no overlay yet; the daemon turns forwarding on with the first one"
		return r
	}
	var off, on []string
	for _, c := range []struct {
		need   bool
		sysctl string
	}{{v4, "net/ipv4/ip_forward"}, {v6, "net/ipv6/conf/all/forwarding"}} {
		if !c.need {
			continue
		}
		v, err := h.Sysctl(c.sysctl)
		if errors.Is(err, ErrUnsupported) {
			return Result{Check: "forwarding", Status: Skip, Message: "cannot read sysctls on this platform"}
		}
		name := strings.ReplaceAll(c.sysctl, "/", ".")
		if err != nil || strings.TrimSpace(v) != "1" {
			off = append(off, name)
		} else {
			on = append(on, name)
		}
	}
	if len(off) > 0 {
		r.Status = Fail
		r.Message = strings.Join(off, ", ") + " is off: containers cannot reach other nodes or the outside"
		r.Fix = "sysctl -w " + strings.Join(off, "=1 ") + "=1; the daemon turns it on with the overlay, so something turned it off since: look in /etc/sysctl.d and at other network daemons"
		return r
	}
	r.Status, r.Message = OK, strings.Join(on, ", ")+" on"
	return r
}

// RPFilter: strict reverse-path filtering on the overlay or a bridge drops
// packets whose source is not routed back through the interface they came
// in on — a peer's subnet missing from its allowed IPs, or an asymmetric
// path — silently. The effective value is the higher of "all" and the
// interface's.
func RPFilter(h Host, s protocol.StatusSnapshot) Result {
	r := Result{Check: "rp_filter"}
	ifaces := ourInterfaces(s)
	if len(ifaces) == 0 {
		r.Status, r.Message = OK, "no overlay interfaces yet"
		return r
	}
	all, err := h.Sysctl("net/ipv4/conf/all/rp_filter")
	if errors.Is(err, ErrUnsupported) {
		r.Status, r.Message = Skip, "cannot read sysctls on this platform"
		return r
	}
	allV, _ := strconv.Atoi(strings.TrimSpace(all))
	var strict []string
	for _, name := range ifaces {
		v, err := h.Sysctl("net/ipv4/conf/" + name + "/rp_filter")
		if err != nil {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimSpace(v))
		if max(n, allV) == 1 {
			strict = append(strict, name)
		}
	}
	if len(strict) == 0 {
		r.Status, r.Message = OK, "reverse-path filtering is off or loose on "+strings.Join(ifaces, ", ")
		return r
	}
	r.Status = Warn
	r.Message = "strict reverse-path filtering (rp_filter=1) on " + strings.Join(strict, ", ") +
		": packets from cluster addresses not routed back through the interface they arrive on are dropped silently"
	r.Fix = "make it loose: sysctl -w net.ipv4.conf.all.rp_filter=2"
	for _, n := range strict {
		r.Fix += " net.ipv4.conf." + n + ".rp_filter=2"
	}
	return r
}

// ourInterfaces are the global overlay device and the service bridges.
func ourInterfaces(s protocol.StatusSnapshot) []string {
	var out []string
	if s.Interface != "" {
		out = append(out, s.Interface)
	}
	for _, svc := range s.Services {
		if svc.Bridge != "" {
			out = append(out, svc.Bridge)
		}
	}
	return out
}

// wireGuardOverhead is what WireGuard adds to an inner packet: outer IP
// header (20, or 40 for IPv6), UDP (8), WireGuard header and tag (32).
func wireGuardOverhead(endpointV6 bool) int {
	if endpointV6 {
		return 80
	}
	return 60
}

// MTU: the overlay device has the configured MTU, no bridge sends bigger
// packets than the overlay carries, and the overlay's packets plus
// WireGuard's overhead fit the underlay path to every peer.
func MTU(h Host, s protocol.StatusSnapshot) Result {
	r := Result{Check: "mtu"}
	if s.Interface == "" {
		r.Status, r.Message = OK, "no overlay device yet"
		return r
	}
	overlay, err := h.LinkMTU(s.Interface)
	if errors.Is(err, ErrUnsupported) {
		r.Status, r.Message = Skip, "cannot inspect links on this platform"
		return r
	}
	if err != nil {
		r.Status, r.Message = Fail, "overlay device "+s.Interface+" is missing: "+err.Error()
		r.Fix = "the daemon's next reconcile recreates it; if it stays missing, read its log"
		return r
	}
	var problems, fixes []string
	if s.MTU != 0 && overlay != s.MTU {
		problems = append(problems, fmt.Sprintf("%s has MTU %d, the daemon's --mtu is %d", s.Interface, overlay, s.MTU))
		fixes = append(fixes, "something changed it; the daemon sets it back on a restart (systemctl restart zlayer-overlayd)")
	}
	for _, svc := range s.Services {
		if svc.Bridge == "" {
			continue
		}
		if m, err := h.LinkMTU(svc.Bridge); err == nil && m > overlay {
			problems = append(problems, fmt.Sprintf("bridge %s has MTU %d, more than the overlay's %d: containers' big packets to other nodes are fragmented or dropped", svc.Bridge, m, overlay))
			fixes = append(fixes, fmt.Sprintf("ip link set %s mtu %d", svc.Bridge, overlay))
		}
	}
	checked := 0
	for _, p := range append(append([]protocol.PeerStatus(nil), s.Peers...), servicePeers(s)...) {
		ap, err := netip.ParseAddrPort(p.Endpoint)
		if err != nil {
			continue
		}
		dev, under, err := h.RouteTo(ap.Addr())
		if err != nil {
			continue
		}
		checked++
		need := overlay + wireGuardOverhead(ap.Addr().Is6() && !ap.Addr().Is4In6())
		if under < need {
			problems = append(problems, fmt.Sprintf("packets to peer %s (%s) leave through %s with MTU %d, but a full overlay packet needs %d: big packets are fragmented or dropped", short(p.PublicKey), p.Endpoint, dev, under, need))
			fixes = append(fixes, fmt.Sprintf("lower the daemon's --mtu to %d (on every node), or raise %s's MTU", under-(need-overlay), dev))
		}
	}
	if len(problems) > 0 {
		r.Status, r.Message, r.Fix = Fail, strings.Join(problems, "; "), strings.Join(dedupe(fixes), "; ")
		return r
	}
	r.Status = OK
	r.Message = fmt.Sprintf("overlay %d; bridges fit; the underlay path to %s fits with WireGuard's overhead", overlay, count(checked, "peer"))
	return r
}

func servicePeers(s protocol.StatusSnapshot) []protocol.PeerStatus {
	var out []protocol.PeerStatus
	for _, sp := range s.ServicePeers {
		out = append(out, sp.Peers...)
	}
	return out
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// DNS: every service's bridge gateway — the resolver in its containers'
// resolv.conf — has a listener, and it answers for the zone.
func DNS(ctx context.Context, h Host, s protocol.StatusSnapshot) Result {
	r := Result{Check: "dns"}
	if s.DNS == nil {
		r.Status, r.Message = Skip, "the daemon's DNS server is off (--dns=false)"
		return r
	}
	listeners := map[netip.Addr]netip.AddrPort{}
	for _, l := range s.DNS.Listeners {
		if ap, err := netip.ParseAddrPort(l); err == nil {
			if _, dup := listeners[ap.Addr()]; !dup || ap.Port() == 53 {
				listeners[ap.Addr()] = ap
			}
		}
	}
	var bad, good []string
	for _, svc := range s.Services {
		if !svc.Gateway.IsValid() {
			continue
		}
		ap, ok := listeners[svc.Gateway]
		if !ok {
			bad = append(bad, fmt.Sprintf("no DNS listener on %s, the gateway of service %s", svc.Gateway, svc.Service))
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		rcode, err := h.QueryDNS(qctx, ap, s.DNS.Zone)
		cancel()
		switch {
		case errors.Is(err, ErrUnsupported):
			return Result{Check: "dns", Status: Skip, Message: "cannot send DNS queries on this platform"}
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s (service %s) does not answer: %v", ap, svc.Service, err))
		case rcode != "NOERROR":
			bad = append(bad, fmt.Sprintf("%s (service %s) answers %s for zone %s", ap, svc.Service, rcode, s.DNS.Zone))
		default:
			good = append(good, ap.String())
		}
	}
	if len(bad) > 0 {
		r.Status, r.Message = Fail, strings.Join(bad, "; ")
		r.Fix = "status.warnings and the daemon's log say why a listener could not bind (a port taken by another resolver, such as systemd-resolved or dnsmasq on 0.0.0.0:53); the daemon retries on every reconcile"
		return r
	}
	zone := strings.TrimSuffix(s.DNS.Zone, ".")
	if len(good) == 0 {
		r.Status, r.Message = OK, "no bridge gateways yet; zone "+zone
		return r
	}
	r.Status, r.Message = OK, "zone "+zone+" answers on "+strings.Join(good, ", ")
	return r
}

// staleHandshake is how old a handshake may be while a session is kept
// alive: WireGuard renews a session every 2 minutes when packets flow, and
// a persistent keepalive keeps them flowing.
const staleHandshake = 3 * time.Minute

// Peers: every peer has completed a handshake, recently when it is kept
// alive; for each that has not, the likely reason.
func Peers(s protocol.StatusSnapshot, now time.Time) Result {
	r := Result{Check: "peers"}
	all := append(append([]protocol.PeerStatus(nil), s.Peers...), servicePeers(s)...)
	if len(all) == 0 {
		r.Status, r.Message = OK, "no peers"
		return r
	}
	var bad, fixes []string
	idle := 0
	for _, p := range all {
		age := time.Duration(0)
		if p.LastHandshakeUnixSecs > 0 {
			age = now.Sub(time.Unix(p.LastHandshakeUnixSecs, 0))
		}
		switch {
		case p.LastHandshakeUnixSecs > 0 && (age <= staleHandshake || p.PersistentKeepaliveSecs == 0):
			if age > staleHandshake {
				idle++
			}
			continue
		case p.LastHandshakeUnixSecs > 0:
			bad = append(bad, fmt.Sprintf("%s: last handshake %s ago despite a %ds keepalive", short(p.PublicKey), Age(now, p.LastHandshakeUnixSecs), p.PersistentKeepaliveSecs))
		default:
			bad = append(bad, short(p.PublicKey)+": no handshake yet")
		}
		reason, fix := peerReason(p, s.NAT)
		bad[len(bad)-1] += " (" + reason + ")"
		fixes = append(fixes, fix)
	}
	if len(bad) > 0 {
		r.Status = Fail
		r.Message = fmt.Sprintf("%d of %d peers without a recent handshake: %s", len(bad), len(all), strings.Join(bad, "; "))
		r.Fix = strings.Join(dedupe(fixes), "; ")
		return r
	}
	r.Status = OK
	r.Message = count(len(all), "peer") + ", every one with a recent handshake"
	if idle > 0 {
		r.Message = fmt.Sprintf("%s with a handshake; %d idle (no keepalive, no traffic lately)", count(len(all), "peer"), idle)
	}
	return r
}

// peerReason guesses why a peer does not handshake, from what status
// knows: its endpoint and this node's NAT.
func peerReason(p protocol.PeerStatus, nat *protocol.NATStatus) (reason, fix string) {
	switch {
	case p.Endpoint == "" || p.Endpoint == "<nil>":
		return "it has no endpoint, so only it can start a handshake",
			"give the peer an endpoint (add_peer with endpoint), or make sure it has this node's reachable endpoint and a keepalive"
	case nat != nil && nat.Behaviour == "endpoint-dependent":
		return "this node is behind an endpoint-dependent (symmetric) NAT: the port peers see changes per destination",
			"give this node a reachable endpoint (port forward of the WireGuard port, or a public address); at least one side of every pair must be reachable"
	case nat != nil && nat.LastError != "":
		return "NAT discovery failed here (" + nat.LastError + ")", "check the underlay: can the node reach " + p.Endpoint + " over UDP? (firewalls, security groups)"
	default:
		return "nothing answers at " + p.Endpoint,
			"check that the peer's daemon is up with this key and port, that UDP to " + p.Endpoint + " passes every firewall on the way, and that both sides have each other's current public key"
	}
}

// short abbreviates a public key for messages, as tailscale and wg do.
func short(key string) string {
	if len(key) > 10 {
		return key[:10] + "…"
	}
	return key
}

// Age says how long ago a Unix time was, as "12s", "3m4s" or "2h5m";
// "never" for 0.
func Age(now time.Time, unix int64) string {
	if unix == 0 {
		return "never"
	}
	d := now.Sub(time.Unix(unix, 0))
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Hour:
		return d.Truncate(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Truncate(time.Minute).String(), "0s")
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
