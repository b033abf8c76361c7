package engine

import (
	"net/netip"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Regression tests for bugs the chaos suites (internal/chaos) found.

// The host route of a container's eth1 names the node IP as its source, and
// the kernel drops it when that address disappears: a SIGKILLed daemon's
// userspace device dies with it, the container's links survive. The restart
// must put the route back, or the container is cut off from the overlay.
func TestRestartRestoresTheHostRouteOfJoinGlobalContainers(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.add(30)
	a := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(30), Service: "web", JoinGlobal: true}).(protocol.Attached)
	route := netip.PrefixFrom(a.GlobalIP, 32)
	h.net.DeleteRoute(linuxnet.Route{Dst: route, Dev: "zl-v30-e1"}) // what the kernel does when the device dies
	attaches := h.net.attaches
	h.crash()
	routes, _ := h.net.Routes("zl-v30-e1")
	if len(routes) != 1 || routes[0].Dst != route || routes[0].Src != netip.MustParseAddr("10.200.3.1") {
		t.Fatalf("host routes of eth1 after the restart: %+v, want %s src 10.200.3.1", routes, route)
	}
	if h.net.attaches != attaches {
		t.Fatal("the repair re-created the container's links instead of adding the route")
	}
}
