//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// A node that ran ZLayer's Rust overlayd, switched to ours: its leftovers
// are built by hand the way the reference leaves them (behaviour doc §5,
// §8): unlabelled bridges zl-…-b with gateway addresses, veth-<pid>-s host
// ends of container veths (one of a live container, one whose container is
// gone), and the marker agent_network.json with a dedicated service.
func TestTakingOverFromTheRustDaemon(t *testing.T) {
	l := newLab(t)
	a := l.AddNode("a")
	key, _ := wg.GenerateKey()
	marker := map[string]any{"version": 1, "networks": []map[string]any{{
		"owner": "service:db", "kind": "wg-dedicated", "name": "zl-p-42-db-d", "id": key.PublicKey().String(),
		"subnet": "10.200.46.224/28", "wg_port": 51471, "wg_private_key": key.String(), "wg_public_key": key.PublicKey().String(),
		"interface": "zl-p-42-db-d",
	}}}
	doc, _ := json.MarshalIndent(marker, "", "  ")
	if err := os.WriteFile(filepath.Join(a.DataDir, "agent_network.json"), doc, 0o644); err != nil {
		t.Fatal(err)
	}
	// The reference's objects, as its code makes them.
	live := l.AddContainer("live")
	pid := strconv.Itoa(live.PID)
	for _, cmd := range [][]string{
		{"ip", "link", "add", "zl-p-42-web-b", "type", "bridge"},
		{"ip", "addr", "add", "10.200.77.1/28", "dev", "zl-p-42-web-b"},
		{"ip", "link", "set", "zl-p-42-web-b", "up"},
		{"ip", "link", "add", "zl-p-42-old-b", "type", "bridge"},
		{"ip", "link", "add", "veth-" + pid + "-s", "type", "veth", "peer", "name", "vc-" + pid + "-s"},
		{"ip", "link", "set", "vc-" + pid + "-s", "netns", pid, "name", "eth0"},
		{"ip", "link", "set", "veth-" + pid + "-s", "master", "zl-p-42-web-b", "up"},
		{"ip", "link", "add", "veth-3999999-s", "type", "veth", "peer", "name", "vc-3999999-s"},
		{"ip", "link", "set", "veth-3999999-s", "master", "zl-p-42-old-b"},
	} {
		a.MustExec(cmd...)
	}
	for _, cmd := range [][]string{
		{"ip", "addr", "add", "10.200.77.2/28", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
	} {
		if out, err := live.Exec(cmd...); err != nil {
			t.Fatalf("%v: %v %s", cmd, err, out)
		}
	}
	mustPing(t, "live", live.Ping, mustAddr("10.200.77.1"))

	// Our daemon starts on that data dir.
	a.Kill()
	a.Start()
	links := a.MustExec("ip", "-o", "link", "show")
	for _, gone := range []string{"veth-3999999-s", "zl-p-42-old-b"} {
		if strings.Contains(links, gone+":") || strings.Contains(links, gone+"@") {
			t.Fatalf("%s (its container gone, or no port left) survived the start:\n%s", gone, links)
		}
	}
	for _, kept := range []string{"veth-" + pid + "-s", "zl-p-42-web-b"} {
		if !strings.Contains(links, kept) {
			t.Fatalf("%s of a live container was removed at start:\n%s", kept, links)
		}
	}
	mustPing(t, "live, before it is attached again", live.Ping, mustAddr("10.200.77.1"))

	// The dedicated service keeps its identity: other nodes know its key.
	a.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: cluster, SliceCIDR: sliceOf(0), WGPort: 51420})
	db := a.Call(protocol.SetupServiceOverlay{Service: "db", Mode: protocol.ModeDedicated}).(protocol.ServiceOverlay)
	if db.WGPublicKey != key.PublicKey().String() || db.WGPort != 51471 || db.Subnet != "10.200.46.224/28" {
		t.Fatalf("dedicated service not adopted from the marker: %+v", db)
	}
	// The live container attached again: ours replace its links, and the
	// reference's bridge goes once its last port is gone.
	web := a.Call(protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeShared}).(protocol.ServiceOverlay)
	at := a.Call(protocol.AttachContainer{Handle: live.Handle(), Service: "web"}).(protocol.Attached)
	if ip, err := live.Addr("eth0"); err != nil || ip != at.IP {
		t.Fatalf("container eth0 %s (%v), attached as %s", ip, err, at.IP)
	}
	mustPing(t, "live, attached by us", live.Ping, web.Gateway)
	lab.Eventually(t, 10*time.Second, "the reference's bridge removed", func() error {
		if out := a.MustExec("ip", "-o", "link", "show"); strings.Contains(out, "zl-p-42-web-b") || strings.Contains(out, "veth-"+pid) {
			return fmt.Errorf("still there:\n%s", out)
		}
		return nil
	})
}
