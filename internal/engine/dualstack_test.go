package engine

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Dual-stack clusters: one IPv4 and one IPv6 prefix everywhere a cluster
// has one; reference fields keep the first family.

func dualReq() protocol.SetupGlobalOverlay {
	return protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "42", WGPort: 51820,
		ClusterCIDR: "10.200.0.0/16,fd00:200::/56", SliceCIDR: "10.200.3.0/24,fd00:200:0:3::/64"}
}

func hasPrefix(ps []netip.Prefix, s string) bool {
	return slices.Contains(ps, netip.MustParsePrefix(s))
}

func TestDualStackGlobalOverlay(t *testing.T) {
	h := newHarness(t)
	h.ok(dualReq())
	s := h.status()
	if s.NodeIP != netip.MustParseAddr("10.200.3.1") || s.OverlayCIDR != "10.200.0.0/16" || s.SliceCIDR != "10.200.3.0/24" {
		t.Fatalf("reference fields must keep the first family: %+v", s)
	}
	if !slices.Equal(s.NodeIPs, []netip.Addr{netip.MustParseAddr("10.200.3.1"), netip.MustParseAddr("fd00:200:0:3::1")}) ||
		!slices.Equal(s.OverlayCIDRs, []string{"10.200.0.0/16", "fd00:200::/56"}) || len(s.SliceCIDRs) != 2 {
		t.Fatalf("status families: node_ips %v overlay_cidrs %v slice_cidrs %v", s.NodeIPs, s.OverlayCIDRs, s.SliceCIDRs)
	}
	l, _ := h.net.Link("zl-prod-g")
	if !hasPrefix(l.Addrs, "10.200.3.1/16") || !hasPrefix(l.Addrs, "fd00:200:0:3::1/56") {
		t.Fatalf("device addresses %v", l.Addrs)
	}
	h.crash()
	if after := h.status(); !slices.Equal(after.NodeIPs, s.NodeIPs) {
		t.Fatalf("after a restart node_ips %v", after.NodeIPs)
	}
	// Self-assigned: no slices sent, each family gets one of its own.
	h2 := newHarness(t)
	req := dualReq()
	req.SliceCIDR = ""
	h2.ok(req)
	if s := h2.status(); len(s.NodeIPs) != 2 || !netip.MustParsePrefix("fd00:200::/56").Contains(s.NodeIPs[1]) {
		t.Fatalf("self-assigned node_ips %v", s.NodeIPs)
	}
}

func TestDualStackServicesContainersAndGuests(t *testing.T) {
	h := newHarness(t)
	h.ok(dualReq())
	svc := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	if len(svc.Subnets) != 2 || len(svc.Gateways) != 2 || svc.Subnets[0] != svc.Subnet || svc.Gateways[0] != svc.Gateway {
		t.Fatalf("service answer %+v", svc)
	}
	v6 := netip.MustParsePrefix(svc.Subnets[1])
	if !v6.Addr().Is6() || !netip.MustParsePrefix("fd00:200:0:3::/64").Contains(v6.Addr()) {
		t.Fatalf("IPv6 range %s is not carved from the node's IPv6 slice", v6)
	}
	bridge, _ := h.net.Link(svc.Name)
	if !hasPrefix(bridge.Addrs, netip.PrefixFrom(svc.Gateways[1], v6.Bits()).String()) {
		t.Fatalf("bridge addresses %v lack the IPv6 gateway", bridge.Addrs)
	}
	h.procs.Add(300)
	att := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(300), Service: "web", JoinGlobal: true}).(protocol.Attached)
	if len(att.IPs) != 2 || att.IPs[0] != att.IP || !v6.Contains(att.IPs[1]) || len(att.GlobalIPs) != 2 || !att.GlobalIPs[1].Is6() {
		t.Fatalf("attached %+v", att)
	}
	eth0, _ := h.net.Link("zl-v300-e0")
	if eth0.Spec.Addr2.Addr() != att.IPs[1] || eth0.Spec.Gateway2 != svc.Gateways[1] {
		t.Fatalf("eth0 spec %+v", eth0.Spec)
	}
	eth1, _ := h.net.Link("zl-v300-e1")
	if eth1.Spec.Addr2.Addr() != att.GlobalIPs[1] || len(eth1.Spec.Routes) != 2 || !eth1.Spec.Routes[1].Dst.Addr().Is6() {
		t.Fatalf("eth1 spec %+v", eth1.Spec)
	}
	gc := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm"), Service: "web"}).(protocol.GuestConfig)
	if len(gc.OverlayIPs) != 2 || gc.Peers[0].AllowedIPs != "10.200.0.0/16,fd00:200::/56" {
		t.Fatalf("guest config %+v", gc)
	}
	if p := h.wg.Device("zl-prod-g").Peer(mustKey(gc.PublicKey)); p == nil || len(p.AllowedIPs) != 2 {
		t.Fatalf("guest peer %+v", p)
	}
	a6 := h.ok(protocol.AllocateIP{Service: "web", Family: protocol.FamilyIPv6}).(protocol.IP)
	if !v6.Contains(a6.IP) {
		t.Fatalf("allocate_ip ipv6 gave %s", a6.IP)
	}
	h.fails(protocol.AllocateIP{Service: "web", Family: "ipx"}, "family")

	h.crash()
	if s := h.status(); len(s.Services) != 1 || len(s.Services[0].Subnets) != 2 || len(s.Attachments) != 1 || len(s.Guests) != 1 {
		t.Fatalf("after a restart %+v", s)
	}
	h.ok(protocol.DetachContainer{Handle: protocol.LinuxPID(300)})
	h.ok(protocol.DetachContainer{Handle: protocol.GuestManaged("vm")})
	h.ok(protocol.ReleaseIP{IP: a6.IP})
	h.e.bg.Wait()
	h.ok(protocol.TeardownServiceOverlay{Service: "web"})
	h.e.bg.Wait()
	// Every address is back: the whole IPv6 range can be carved again.
	again := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	if !slices.Equal(again.Subnets, svc.Subnets) {
		t.Fatalf("after teardown the service got %v, before %v", again.Subnets, svc.Subnets)
	}
}

func TestIPv6OnlyCluster(t *testing.T) {
	h := newHarness(t)
	h.ok(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", WGPort: 51820, ClusterCIDR: "fd00:200::/56", SliceCIDR: "fd00:200:0:5::/64"})
	svc := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	h.procs.Add(310)
	att := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(310), Service: "web", JoinGlobal: true}).(protocol.Attached)
	if !att.IP.Is6() || !att.GlobalIP.Is6() || len(att.IPs) != 0 || !netip.MustParsePrefix(svc.Subnet).Contains(att.IP) {
		t.Fatalf("attached %+v (service %+v)", att, svc)
	}
	if s := h.status(); !s.NodeIP.Is6() || len(s.NodeIPs) != 0 {
		t.Fatalf("status %+v", s)
	}
}

func TestDualStackBadInput(t *testing.T) {
	h := newHarness(t)
	for want, req := range map[string]protocol.SetupGlobalOverlay{
		"two prefixes of one family": {Deployment: "p", WGPort: 1, ClusterCIDR: "10.200.0.0/16,10.201.0.0/16"},
		"more than two":              {Deployment: "p", WGPort: 1, ClusterCIDR: "10.200.0.0/16,fd00::/56,fd01::/56"},
		"second family":              {Deployment: "p", WGPort: 1, ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.1.0/24,fd00::/64"},
		"not inside":                 {Deployment: "p", WGPort: 1, ClusterCIDR: "10.200.0.0/16,fd00:200::/56", SliceCIDR: "10.200.1.0/24,fd00:999::/64"},
	} {
		if msg := h.fails(req); !strings.Contains(msg, want) {
			t.Errorf("%s: %q", want, msg)
		}
	}
}
