//go:build linux

package lab

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// The harness itself: nodes come up with their own daemon, reach each other
// on the underlay, containers get their own namespace, and Close leaves
// nothing behind.
func TestLabBuildsAndCleansUp(t *testing.T) {
	if err := Check(); err != nil {
		t.Skip("lab: " + err.Error())
	}
	var l *Lab
	t.Run("build", func(t *testing.T) {
		l = New(t, Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
		a := l.AddNode("a")
		b := l.AddNode("b")
		if err := a.Ping(b.Underlay, 1); err != nil {
			t.Fatal(err)
		}
		if s := a.Status(); s.Version == "" {
			t.Fatalf("status %+v", s)
		}
		c := l.AddContainer("c1")
		out, err := c.Exec("ip", "-o", "link")
		if err != nil || strings.Contains(out, "eth0") {
			t.Fatalf("container namespace is not fresh: %v\n%s", err, out)
		}
		a.Restart()
		if s := a.Status(); s.Version == "" {
			t.Fatal("no status after restart")
		}
		// The node's private /var/run/wireguard is not the host's.
		if _, err := a.Exec("touch", "/var/run/wireguard/probe-"+l.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat("/var/run/wireguard/probe-" + l.ID); err == nil {
			os.Remove("/var/run/wireguard/probe-" + l.ID)
			t.Fatal("the node's /var/run/wireguard leaked into the host's")
		}
	})
	out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(out), "zlt"+l.ID) {
		t.Fatalf("namespaces left behind:\n%s", out)
	}
	if _, err := os.Stat(l.Dir()); !os.IsNotExist(err) {
		t.Fatalf("lab dir left behind: %v", err)
	}
}
