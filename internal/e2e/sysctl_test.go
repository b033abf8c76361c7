//go:build linux

package e2e

import (
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// An IPv4-only cluster turns IPv4 forwarding on and leaves IPv6 forwarding
// as it found it (on a host whose uplink takes router advertisements,
// turning it on would cost the host its IPv6 default route). When the last
// overlay goes, IPv4 forwarding is put back, also after a daemon restart
// in between.
func TestIPv4ClusterLeavesIPv6ForwardingAlone(t *testing.T) {
	l := newLab(t)
	a := l.AddNode("a")
	sysctl := func(name string) string {
		t.Helper()
		return strings.TrimSpace(a.MustExec("sysctl", "-n", name))
	}
	v4, v6 := "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"
	if sysctl(v4) != "0" || sysctl(v6) != "0" {
		t.Fatalf("a fresh node namespace has forwarding on (%s=%s, %s=%s); the test needs it off", v4, sysctl(v4), v6, sysctl(v6))
	}
	setupGlobal(t, []*lab.Node{a})
	a.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	c := l.AddContainer("c")
	a.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: true})
	if got := sysctl(v6); got != "0" {
		t.Errorf("an IPv4-only cluster set %s=%s", v6, got)
	}
	if got := sysctl(v4); got != "1" {
		t.Fatalf("%s=%s with an overlay up; containers cannot reach other nodes", v4, got)
	}

	a.Restart()
	a.Call(protocol.TeardownGlobalOverlay{})
	if got := sysctl(v4); got != "1" {
		t.Fatalf("%s=%s while service web still has its bridge", v4, got)
	}
	a.Call(protocol.TeardownServiceOverlay{Service: "web"})
	if got := sysctl(v4); got != "0" {
		t.Errorf("the last overlay is gone but %s=%s; want it back at 0", v4, got)
	}
	if got := sysctl(v6); got != "0" {
		t.Errorf("%s=%s after teardown", v6, got)
	}
}
