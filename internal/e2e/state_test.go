//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Through the socket: a global overlay with an explicit slice, two services,
// 20 addresses in each, 5 released, SIGKILL, restart: the same subnets and
// counts, the next allocation never returns a held address, and a released
// address comes back only because it was released.
func TestAllocationsSurviveSIGKILL(t *testing.T) {
	l := newLab(t)
	n := l.AddNode("a")
	n.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: cluster, SliceCIDR: "10.200.3.0/24", WGPort: 51820})
	held := map[netip.Addr]bool{}
	var released []netip.Addr
	for _, svc := range []string{"web", "api"} {
		n.Call(protocol.SetupServiceOverlay{Service: svc, Mode: "shared"})
		for i := range 20 {
			ip := n.Call(protocol.AllocateIP{Service: svc}).(protocol.IP).IP
			if held[ip] {
				t.Fatalf("%s handed out twice", ip)
			}
			held[ip] = true
			if i < 5 && svc == "web" {
				released = append(released, ip)
			}
		}
	}
	for _, ip := range released {
		n.Call(protocol.ReleaseIP{IP: ip})
		delete(held, ip)
	}
	before := n.Status()
	n.Kill()
	n.Start()
	after := n.Status()
	if fmt.Sprint(before.Services, before.SlicePool, before.SliceCIDR) != fmt.Sprint(after.Services, after.SlicePool, after.SliceCIDR) {
		t.Fatalf("state changed across SIGKILL:\n%v %v\n%v %v", before.Services, before.SlicePool, after.Services, after.SlicePool)
	}
	got := map[netip.Addr]bool{}
	for range 5 {
		ip := n.Call(protocol.AllocateIP{Service: "web"}).(protocol.IP).IP
		if held[ip] {
			t.Fatalf("%s handed out while still held", ip)
		}
		got[ip] = true
	}
	for _, ip := range released {
		if !got[ip] {
			t.Fatalf("released %s did not come back (got %v)", ip, got)
		}
	}
}

// Two daemons given no slice self-assign different slices (and so node
// IPs) from their own identities. (Two random identities share a /28 of a
// /16 with probability 1/4096.)
func TestSelfAssignedNodeIPsDiffer(t *testing.T) {
	l := newLab(t)
	var ips []netip.Addr
	for _, name := range []string{"a", "b"} {
		n := l.AddNode(name)
		n.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: cluster, WGPort: 51820})
		ips = append(ips, n.Status().NodeIP)
	}
	if ips[0] == ips[1] || !ips[0].IsValid() {
		t.Fatalf("both nodes got %s", ips[0])
	}
}
