//go:build linux

package chaos

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// resync reads back, after a restart, every key an interrupted operation
// may have changed. Whatever the daemon reports becomes the model; check
// then proves it is a whole state (links, addresses, pools and kernel all
// agree), which is what atomicity means from the outside.
func (nd *node) resync() error {
	s, err := nd.status()
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(nd.unsure))
	for k := range nd.unsure {
		keys = append(keys, k)
	}
	// Services first: a service that is gone takes its members with it.
	sort.Slice(keys, func(i, j int) bool {
		si, sj := strings.HasPrefix(keys[i], "svc:"), strings.HasPrefix(keys[j], "svc:")
		if si != sj {
			return si
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		kind, id, _ := strings.Cut(k, ":")
		switch kind {
		case "svc":
			var found *protocol.ServiceStatus
			for i := range s.Services {
				if s.Services[i].Service == id {
					found = &s.Services[i]
				}
			}
			if found == nil {
				// Gone: an interrupted teardown went through, and took
				// the service's members and guests with it. A service
				// the model never had was an interrupted setup that did
				// not happen, which changed nothing: guests attached
				// under its name before (a guest needs no service on
				// the node) stay.
				if nd.services[id] != nil {
					nd.forgetService(id)
				}
				break
			}
			sub, err := netip.ParsePrefix(found.Subnet)
			if err != nil {
				return fmt.Errorf("status: service %s subnet %q: %v", id, found.Subnet, err)
			}
			svc := &service{name: id, mode: found.Mode, subnet: sub, gateway: found.Gateway, iface: found.Bridge}
			for _, d := range s.DedicatedServices {
				if d.Service == id {
					svc.iface, svc.gateway = d.Interface, d.OverlayIP
				}
			}
			if old := nd.services[id]; old != nil && (old.subnet != svc.subnet || old.gateway != svc.gateway || old.mode != svc.mode) {
				return fmt.Errorf("service %s changed across a crash: %+v -> %+v", id, *old, *svc)
			}
			nd.services[id] = svc
		case "att":
			pid, _ := strconv.Atoi(id)
			c := nd.ctrs[pid]
			c.service, c.ip, c.gip, c.join = "", netip.Addr{}, netip.Addr{}, false
			for _, a := range s.Attachments {
				if int(a.Handle.PID) == pid {
					c.service, c.ip, c.gip, c.join = a.Service, a.IP, a.GlobalIP, a.GlobalIP.IsValid()
				}
			}
		case "peer":
			delete(nd.peers, id)
			for _, p := range s.Peers {
				if p.PublicKey == id {
					nd.peers[id] = splitNonEmpty(p.AllowedIPs)
				}
			}
		case "dns":
			got, nx, err := digA(nd.n.Exec, "127.0.0.1", dnsPort, id+"."+s.DNS.Zone)
			if err != nil {
				return err
			}
			if nx {
				delete(nd.dns, id)
			} else {
				nd.dns[id] = got
			}
		case "global":
			nd.down = s.Interface == ""
		case "guest":
			if old, ok := nd.guests[id]; ok {
				delete(nd.peers, old.pub)
				delete(nd.guests, id)
			}
			for _, g := range s.Guests {
				if g.ID == id {
					nd.guests[id] = guest{ip: g.IP, pub: g.PublicKey, service: g.Service}
					nd.peers[g.PublicKey] = []string{netip.PrefixFrom(g.IP, 32).String()}
				}
			}
		case "api":
			// Only teardown marks a pool: its allocations went with the
			// service if the service went (handled by "svc").
		default:
			return fmt.Errorf("unknown model key %q", k)
		}
	}
	clear(nd.unsure)
	return nil
}

// afterRestart records what a restart must have done: containers that died
// while attached are forgotten by the start-up reconcile.
func (nd *node) afterRestart() {
	for _, c := range nd.ctrs {
		if c.deadAttached {
			c.deadAttached = false
			c.service, c.ip, c.gip, c.join = "", netip.Addr{}, netip.Addr{}, false
		}
	}
}

// check compares the daemon's status with the model and both with what the
// kernel of the node and of its containers shows. restarted says whether
// the daemon restarted since containers last died: only then must their
// attachments be gone (otherwise the 30 s reconcile may not have run yet).
func (nd *node) check() error {
	s, err := nd.status()
	if err != nil {
		return err
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	// The global overlay is exactly what was set up, or, torn down, gone
	// but for the slice the node keeps.
	if nd.down {
		if s.Interface != "" || s.NodeIP.IsValid() || s.SliceCIDR != nd.slice.String() || s.OverlayCIDR != clusterCIDR {
			fail("global overlay torn down, but status shows interface %q node_ip %v slice %s cluster %s", s.Interface, s.NodeIP, s.SliceCIDR, s.OverlayCIDR)
		}
	} else if s.Interface != globalIface || s.NodeIP != nd.nodeIP || s.SliceCIDR != nd.slice.String() ||
		s.OverlayCIDR != clusterCIDR || s.PublicKey != nd.pub || s.WGPort != wgPort {
		fail("global overlay changed: interface %s node_ip %s slice %s cluster %s key %s port %d",
			s.Interface, s.NodeIP, s.SliceCIDR, s.OverlayCIDR, s.PublicKey, s.WGPort)
	}
	// The node IP stays the node's while the global overlay is torn down.
	const nodeIPs = 1

	// Services: every acknowledged one, nothing else, never moved.
	gotSvc := map[string]protocol.ServiceStatus{}
	for _, ss := range s.Services {
		gotSvc[ss.Service] = ss
	}
	ded := map[string]protocol.DedicatedServiceStatus{}
	for _, d := range s.DedicatedServices {
		ded[d.Service] = d
	}
	for name, m := range nd.services {
		ss, ok := gotSvc[name]
		if !ok {
			fail("service %s was acknowledged but is gone", name)
			continue
		}
		gw := ss.Gateway
		if d, ok := ded[name]; ok {
			gw = d.OverlayIP
		}
		if ss.Subnet != m.subnet.String() || gw != m.gateway || ss.Mode != m.mode {
			fail("service %s is %s %s gw %s, acknowledged as %s %s gw %s", name, ss.Mode, ss.Subnet, gw, m.mode, m.subnet, m.gateway)
		}
	}
	for name := range gotSvc {
		if nd.services[name] == nil {
			fail("service %s exists but was torn down or never acknowledged", name)
		}
	}

	// Attachments: every acknowledged one with the same addresses; none of
	// a detached or dead container.
	atts := map[int]protocol.AttachStatus{}
	for _, a := range s.Attachments {
		atts[int(a.Handle.PID)] = a
	}
	for pid, c := range nd.ctrs {
		a, ok := atts[pid]
		switch {
		case c.deadAttached:
			// May linger until the next reconcile.
		case c.service == "":
			if ok {
				fail("container %d is attached to %s (%s) but was detached, torn down or died before a restart", pid, a.Service, a.IP)
			}
		case !ok:
			fail("acknowledged attachment of container %d to %s (%s) is gone", pid, c.service, c.ip)
		case a.Service != c.service || a.IP != c.ip || a.GlobalIP != c.gip:
			fail("attachment of container %d is %s %s/%s, acknowledged as %s %s/%s", pid, a.Service, a.IP, a.GlobalIP, c.service, c.ip, c.gip)
		}
	}
	for pid := range atts {
		if nd.ctrs[pid] == nil {
			fail("attachment of a pid the workload never attached: %d", pid)
		}
	}

	// Guests: exactly the acknowledged ones, with their addresses and keys.
	gotGuests := map[string]protocol.GuestStatus{}
	for _, g := range s.Guests {
		gotGuests[g.ID] = g
	}
	for id, g := range nd.guests {
		if sg, ok := gotGuests[id]; !ok || sg.IP != g.ip || sg.PublicKey != g.pub || sg.Service != g.service {
			fail("guest %s is %+v, acknowledged %s key %s", id, sg, g.ip, g.pub)
		}
	}
	for id := range gotGuests {
		if _, ok := nd.guests[id]; !ok {
			fail("guest %s exists but was detached or never acknowledged", id)
		}
	}

	// No address is held twice.
	holder := map[netip.Addr]string{}
	hold := func(a netip.Addr, who string) {
		if !a.IsValid() {
			return
		}
		if prev, dup := holder[a]; dup {
			fail("address %s is held twice: by %s and by %s", a, prev, who)
		}
		holder[a] = who
	}
	hold(s.NodeIP, "the node")
	for _, ss := range s.Services {
		gw := ss.Gateway
		if d, ok := ded[ss.Service]; ok {
			gw = d.OverlayIP
		}
		hold(gw, "gateway of "+ss.Service)
	}
	for _, a := range s.Attachments {
		hold(a.IP, fmt.Sprintf("container %d (eth0)", a.Handle.PID))
		hold(a.GlobalIP, fmt.Sprintf("container %d (eth1)", a.Handle.PID))
	}
	for _, g := range s.Guests {
		hold(g.IP, "guest "+g.ID)
	}
	for a, pool := range nd.api {
		hold(a, "allocate_ip from "+pool)
	}

	// Pools count exactly the holders above: no leak, no double free.
	for _, ss := range s.Services {
		want := uint64(1 + nd.apiIn("service:"+ss.Service))
		for _, a := range s.Attachments {
			if a.Service == ss.Service {
				want++
			}
		}
		if ss.Used != want {
			fail("service %s pool has %d addresses in use, but the gateway, its attachments and allocate_ip account for %d", ss.Service, ss.Used, want)
		}
	}
	if s.SlicePool == nil {
		fail("status has no slice pool")
	} else {
		want := uint64(nodeIPs + len(s.Guests) + nd.apiIn("slice"))
		for _, a := range s.Attachments {
			if a.GlobalIP.IsValid() {
				want++
			}
		}
		if s.SlicePool.Used != want {
			fail("node slice pool has %d addresses in use, but the node IP, eth1 addresses, guests and allocate_ip account for %d", s.SlicePool.Used, want)
		}
	}

	exec := nd.n.Exec
	// Links: everything labelled ours is wanted, everything wanted exists.
	ls, err := links(exec)
	if err != nil {
		return err
	}
	present := map[string]kLink{}
	for _, l := range ls {
		present[l.Name] = l
	}
	wanted := map[string]string{}
	if !nd.down {
		wanted[globalIface] = "global device"
	}
	bridgeOf := map[string]string{}
	for _, ss := range s.Services {
		wanted[ss.Bridge] = "bridge of " + ss.Service
		bridgeOf[ss.Bridge] = ss.Service
	}
	for _, d := range s.DedicatedServices {
		wanted[d.Interface] = "dedicated device of " + d.Service
	}
	hostLinkOf := map[string]protocol.AttachStatus{}
	for _, a := range s.Attachments {
		lingering := nd.ctrs[int(a.Handle.PID)] != nil && nd.ctrs[int(a.Handle.PID)].deadAttached
		names := []string{a.HostLink}
		if a.GlobalIP.IsValid() {
			names = append(names, fmt.Sprintf("zl-v%d-e1", a.Handle.PID))
		}
		for _, n := range names {
			hostLinkOf[n] = a
			if !lingering {
				wanted[n] = fmt.Sprintf("veth of container %d", a.Handle.PID)
			}
		}
	}
	ka, err := addrs(exec)
	if err != nil {
		return err
	}
	ports := map[string]int{}
	for _, l := range ls {
		ports[l.Master]++
	}
	ours := map[string]bool{}
	for _, l := range ls {
		if !strings.HasPrefix(l.Alias, aliasPrefix) {
			// An unlabelled link of our naming that nothing wants is
			// tolerated only if it is inert: a bridge a crash left between
			// creating and labelling it, with no address and no port.
			_, isWanted := wanted[l.Name]
			if strings.HasPrefix(l.Name, "zl-") && !isWanted && (l.Info.Kind != "bridge" || len(ka[l.Name]) > 0 || ports[l.Name] > 0) {
				fail("unlabelled link %s (%s, addresses %v, %d ports) is of our naming but nothing wants it", l.Name, l.Info.Kind, ka[l.Name], ports[l.Name])
			}
			continue
		}
		ours[l.Name] = true
		if _, ok := wanted[l.Name]; !ok {
			if _, lingering := hostLinkOf[l.Name]; !lingering {
				fail("orphan link %s (%s, label %s): nothing in the store wants it", l.Name, l.Info.Kind, l.Alias)
			}
		}
		if svc, isBridge := bridgeOf[l.Master]; isBridge {
			if a, ok := hostLinkOf[l.Name]; !ok || a.Service != svc || a.HostLink != l.Name {
				fail("link %s is a port of bridge %s of %s but belongs to no attachment of that service", l.Name, l.Master, svc)
			}
		}
	}
	for name, what := range wanted {
		l, ok := present[name]
		switch {
		case !ok:
			fail("%s %s is in the store but not in the kernel", what, name)
		case !ours[name]:
			fail("%s %s exists without our label", what, name)
		case !slices.Contains(l.Flags, "UP"):
			fail("%s %s is down", what, name)
		}
	}
	for _, a := range s.Attachments {
		if l, ok := present[a.HostLink]; ok && wanted[a.HostLink] != "" && l.Master != bridgeFor(s, a.Service) {
			fail("veth %s of container %d is a port of %q, not of its service's bridge %s", a.HostLink, a.Handle.PID, l.Master, bridgeFor(s, a.Service))
		}
	}

	// Addresses of our links.
	wantAddr := map[string][]netip.Prefix{}
	if !nd.down {
		wantAddr[globalIface] = []netip.Prefix{netip.PrefixFrom(nd.nodeIP, cluster.Bits())}
	}
	for _, ss := range s.Services {
		sub := netip.MustParsePrefix(ss.Subnet)
		wantAddr[ss.Bridge] = []netip.Prefix{netip.PrefixFrom(ss.Gateway, sub.Bits())}
	}
	for _, d := range s.DedicatedServices {
		wantAddr[d.Interface] = []netip.Prefix{netip.PrefixFrom(d.OverlayIP, 32)}
	}
	for name := range ours {
		if !slices.Equal(ka[name], wantAddr[name]) {
			fail("link %s has addresses %v, want %v", name, ka[name], wantAddr[name])
		}
	}

	// Routes through our links: exactly the wanted ones.
	rs, err := routes(exec)
	if err != nil {
		return err
	}
	wantRoute := map[string]bool{}
	if !nd.down {
		wantRoute[clusterCIDR+" "+globalIface] = true
	}
	for _, ips := range nd.peers {
		if nd.down {
			break
		}
		for _, c := range ips {
			p := netip.MustParsePrefix(c)
			if p.Bits() > 0 && !(cluster.Bits() <= p.Bits() && cluster.Contains(p.Addr())) {
				wantRoute[p.Masked().String()+" "+globalIface] = true
			}
		}
	}
	for _, ss := range s.Services {
		wantRoute[ss.Subnet+" "+ss.Bridge] = true
	}
	for _, a := range s.Attachments {
		if a.GlobalIP.IsValid() && !nd.ctrs[int(a.Handle.PID)].deadAttached && !nd.down {
			wantRoute[netip.PrefixFrom(a.GlobalIP, 32).String()+fmt.Sprintf(" zl-v%d-e1", a.Handle.PID)] = true
		}
	}
	gotRoute := map[string]bool{}
	for _, r := range rs {
		if !ours[r.Dev] {
			continue
		}
		dst := r.Dst
		if dst == "default" {
			dst = "0.0.0.0/0"
		} else if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		k := dst + " " + r.Dev
		gotRoute[k] = true
		if !wantRoute[k] {
			if _, lingering := hostLinkOf[r.Dev]; !lingering {
				fail("orphan route %s dev %s (%s)", dst, r.Dev, r.Protocol)
			}
		}
	}
	for k := range wantRoute {
		if !gotRoute[k] {
			fail("route %s is wanted but missing", k)
		}
	}

	// Our nftables table names exactly our devices and bridges.
	sets, err := nftIfnameSets(exec, "inet", "zlayer_overlay")
	if err != nil {
		return err
	}
	overlay := []string{globalIface}
	for _, d := range s.DedicatedServices {
		overlay = append(overlay, d.Interface)
	}
	var bridges []string
	for _, ss := range s.Services {
		bridges = append(bridges, ss.Bridge)
	}
	sort.Strings(overlay)
	sort.Strings(bridges)
	clamp := slices.Concat(overlay, bridges)
	sort.Strings(clamp)
	switch {
	case nd.down:
		if sets != nil {
			fail("our nftables table exists while the global overlay is torn down: %v", sets)
		}
	case sets == nil:
		fail("our nftables table is missing")
	default:
		for name, want := range map[string][]string{"overlay_ifaces": overlay, "global_ifaces": {globalIface}, "bridges": bridges, "mss_clamp_ifaces": clamp} {
			if got := sets[name]; !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
				fail("nft set %s is %v, want %v", name, got, want)
			}
		}
	}

	// WireGuard: the device is the node's identity with exactly the
	// acknowledged peers and allowed IPs.
	dev, err := wgDump(exec, globalIface)
	switch {
	case nd.down:
		// The device is gone (the link check says so); its peers are
		// remembered and must all be back once it is set up again.
	case err != nil:
		fail("%v", err)
	default:
		if dev.PublicKey != nd.pub || dev.ListenPort != wgPort {
			fail("wg device key %s port %d, want %s %d", dev.PublicKey, dev.ListenPort, nd.pub, wgPort)
		}
		for pub, ips := range nd.peers {
			p, ok := dev.Peers[pub]
			if !ok {
				fail("acknowledged peer %s is not on the device", pub)
			} else if !slices.Equal(p.AllowedIPs, ips) {
				fail("peer %s has allowed IPs %v on the device, acknowledged %v", pub, p.AllowedIPs, ips)
			}
		}
		for pub := range dev.Peers {
			if _, ok := nd.peers[pub]; !ok {
				fail("device has peer %s, which was removed or never acknowledged", pub)
			}
		}
	}
	for _, d := range s.DedicatedServices {
		dd, err := wgDump(exec, d.Interface)
		if err != nil {
			fail("%v", err)
		} else if dd.PublicKey != d.PublicKey || dd.ListenPort != int(d.ListenPort) {
			fail("dedicated device %s: key %s port %d, status says %s %d", d.Interface, dd.PublicKey, dd.ListenPort, d.PublicKey, d.ListenPort)
		}
	}

	// DNS: exactly the acknowledged records.
	if s.DNS == nil || s.DNS.Records != len(nd.dns) {
		fail("status counts %v DNS names, %d were acknowledged", s.DNS, len(nd.dns))
	}
	for _, name := range dnsNames {
		got, nx, err := digA(exec, "127.0.0.1", dnsPort, name+"."+s.DNS.Zone)
		if err != nil {
			fail("%v", err)
			continue
		}
		want := nd.dns[name]
		if len(want) == 0 && !nx {
			fail("DNS answers %s with %v after it was unregistered (or never registered)", name, got)
		} else if len(want) > 0 && !slices.Equal(got, want) {
			fail("DNS answers %s with %v, acknowledged %v", name, got, want)
		}
	}

	// Inside the containers: the acknowledged addresses, or no links at all.
	for pid, c := range nd.ctrs {
		if c.dead {
			continue
		}
		cl, err := links(c.c.Exec)
		if err != nil {
			return err
		}
		ca, err := addrs(c.c.Exec)
		if err != nil {
			return err
		}
		var names []string
		for _, l := range cl {
			if l.Name != "lo" {
				names = append(names, l.Name)
			}
		}
		sort.Strings(names)
		if c.service == "" {
			if len(names) > 0 {
				fail("detached container %d still has links %v", pid, names)
			}
			continue
		}
		want := []string{"eth0"}
		if c.join {
			want = append(want, "eth1")
		}
		if !slices.Equal(names, want) {
			fail("container %d has links %v, want %v", pid, names, want)
			continue
		}
		sub := nd.services[c.service].subnet
		if got := ka0(ca["eth0"]); got != netip.PrefixFrom(c.ip, sub.Bits()) {
			fail("container %d eth0 has %v, want %s", pid, ca["eth0"], netip.PrefixFrom(c.ip, sub.Bits()))
		}
		if c.join {
			if got := ka0(ca["eth1"]); got != netip.PrefixFrom(c.gip, 32) {
				fail("container %d eth1 has %v, want %s/32", pid, ca["eth1"], c.gip)
			}
		}
	}
	return errors.Join(errs...)
}

func bridgeFor(s protocol.StatusSnapshot, service string) string {
	for _, ss := range s.Services {
		if ss.Service == service {
			return ss.Bridge
		}
	}
	return ""
}

func ka0(ps []netip.Prefix) netip.Prefix {
	if len(ps) != 1 {
		return netip.Prefix{}
	}
	return ps[0]
}

// reachable proves every attached, live container can reach its gateway
// and, through the tunnel, the other node.
func (nd *node) reachable(other *node) error {
	var errs []error
	for _, pid := range sortedPIDs(nd.ctrs) {
		c := nd.ctrs[pid]
		if c.dead || c.service == "" {
			continue
		}
		if err := c.c.Ping(nd.services[c.service].gateway, 1); err != nil {
			errs = append(errs, fmt.Errorf("container %d of %s cannot reach its gateway: %v", pid, c.service, err))
		}
		if nd.down || other.down {
			continue
		}
		if err := c.c.Ping(other.nodeIP, 1); err != nil {
			errs = append(errs, fmt.Errorf("container %d of %s (join_global=%t) cannot reach node %s over the overlay: %v", pid, c.service, c.join, other.name, err))
		}
	}
	return errors.Join(errs...)
}

func sortedPIDs(m map[int]*ctr) []int {
	out := make([]int, 0, len(m))
	for pid := range m {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

// checkAll settles and checks both nodes: the structural invariants must
// hold within a few seconds (links are deleted in the background after a
// detach), reachability within the time a WireGuard handshake takes.
func (w *world) checkAll(what string) {
	w.t.Helper()
	start := time.Now()
	for _, nd := range w.nodes {
		var last error
		deadline := time.Now().Add(15 * time.Second)
		for {
			if last = nd.check(); last == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if last != nil {
			w.fatalf("%s: node %s: invariants do not hold:\n%v", what, nd.name, last)
		}
	}
	for i, nd := range w.nodes {
		other := w.nodes[1-i]
		lab.Eventually(tbFunc{w}, 30*time.Second, what+": node "+nd.name+" reachability", func() error { return nd.reachable(other) })
	}
	w.t.Logf("%s: invariants hold on both nodes (checked in %v)", what, time.Since(start).Round(time.Millisecond))
}

// tbFunc routes lab.Eventually's failure through fatalf (with history).
type tbFunc struct{ w *world }

func (f tbFunc) Helper()                           {}
func (f tbFunc) Logf(format string, args ...any)   { f.w.t.Logf(format, args...) }
func (f tbFunc) Fatalf(format string, args ...any) { f.w.fatalf(format, args...) }
func (f tbFunc) Cleanup(fn func())                 { f.w.t.Cleanup(fn) }
