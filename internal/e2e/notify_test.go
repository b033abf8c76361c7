//go:build linux

package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
)

// Under a service manager (systemd, Type=notify): READY=1 only once the
// state is restored and the socket serves it, WATCHDOG=1 at least every
// half of WATCHDOG_USEC while the engine answers, STOPPING=1 on a stop.
func TestServiceManagerNotifications(t *testing.T) {
	l := newLab(t, "--wireguard", "userspace")
	nodes := []*lab.Node{l.AddNode("a"), l.AddNode("b")}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	a := nodes[0]

	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type note struct {
		at   time.Time
		text string
	}
	notes := make(chan note, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			notes <- note{time.Now(), string(buf[:n])}
		}
	}()
	a.Env = []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=4000000"}
	a.Kill()
	a.Start()

	deadline := time.After(30 * time.Second)
	var ready string
	for ready == "" {
		select {
		case n := <-notes:
			if strings.HasPrefix(n.text, "READY=1") {
				ready = n.text
			}
		case <-deadline:
			t.Fatal("no READY=1 within 30 s")
		}
	}
	if !strings.Contains(ready, "STATUS=serving") || !strings.Contains(ready, "1 peers") {
		t.Fatalf("READY=1 came with %q", ready)
	}
	if s := a.Status(); s.PeerCount != 1 || s.Peers[0].PublicKey != st[1].PublicKey {
		t.Fatalf("after READY=1 status shows %d peers", s.PeerCount)
	}
	// Watchdog pings: a run of them, none later than the timeout after the
	// one before (what systemd would kill for).
	var pings []time.Time
	for len(pings) < 4 {
		select {
		case n := <-notes:
			if n.text == "WATCHDOG=1" {
				pings = append(pings, n.at)
			}
		case <-time.After(4 * time.Second):
			t.Fatalf("no WATCHDOG=1 for 4 s (WATCHDOG_USEC=4000000) after %d pings", len(pings))
		}
	}
	a.Stop()
	for {
		select {
		case n := <-notes:
			if strings.HasPrefix(n.text, "STOPPING=1") {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no STOPPING=1 on SIGTERM")
		}
	}
}
