package engine

import (
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/wg"
)

// NAT traversal and the firewall follow the overlay from beside the
// requests: a failed or concurrent request must not leave them serving
// something the main daemon was not told of, and what a request was
// answered ok for must not be undone by them.

// A setup_global_overlay that opens a new device (a new deployment name)
// and fails leaves the global device as it was; its NAT-traversal bind must
// stay the one STUN probes, candidate switches and the TURN relay use. The
// failed setup made the bind of its never-published device the engine's,
// so the live device lost NAT traversal: probes failed on a closed socket,
// relay routes went to a bind nothing sends through, and the relay was
// attached there (or, when the failed request had no TURN servers,
// stopped).
func TestFailedGlobalSetupKeepsTheLiveDevicesNATBind(t *testing.T) {
	h := newHarnessOn(t, wg.KindUserspace, func(c *Config) {
		c.NAT = &NATConfig{Servers: []string{"192.0.2.1:3478"}, RefreshInterval: -1}
	})
	h.ok(globalReq("10.200.3.0/24"))
	live := h.e.natBind()
	if live == nil {
		t.Fatal("no NAT-traversal bind on the global device with STUN servers configured")
	}
	// The renamed deployment's device cannot open: its name is taken.
	renamed := globalReq("10.200.3.0/24")
	renamed.Deployment = "staging"
	if _, err := h.wg.Open(ifName("g", renamed.Deployment), wg.Options{}); err != nil {
		t.Fatal(err)
	}
	h.fails(renamed, "already open")
	if h.wg.Device("zl-prod-g") == nil {
		t.Fatal("the failed setup closed the live device")
	}
	if got := h.e.natBind(); got != live {
		t.Fatalf("after a failed setup_global_overlay the NAT bind is %p, not the live device's %p", got, live)
	}
}
