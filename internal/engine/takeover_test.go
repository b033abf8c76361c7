package engine

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// On a node taken over from the Rust daemon, every reconcile pass removes
// the unlabelled zl-…-b bridges it left once their ports are gone. A
// bridge of ours is unlabelled too for a moment: the kernel takes its
// label in a second request after creating it. A pass that looked in that
// moment deleted the new bridge: the setup creating it then failed at its
// label step (what this test saw on the old code), or, when the deletion
// came after the label, answered ok for a service without a bridge.
func TestLegacySweepLeavesABridgeBeingCreated(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, ReferenceMarkerFile)
	if err := os.WriteFile(marker, []byte(`{"version":1,"networks":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarnessWith(t, func(c *Config) { c.ReferenceMarkerPath = marker })
	h.ok(globalReq("10.200.3.0/24"))

	swept := make(chan struct{}, 1)
	h.e.testHook = func(p string) {
		if p == "reconcile.legacy" {
			select {
			case swept <- struct{}{}:
			default:
			}
		}
	}
	passDone := make(chan error, 1)
	var bridge string
	h.net.OnBridgeCreated(func(name string) {
		h.net.OnBridgeCreated(nil)
		bridge = name
		go func() {
			_, err := h.e.Reconcile(context.Background())
			passDone <- err
		}()
		<-swept
		// The pass, left alone, deletes what it saw unlabelled well
		// within this; one that waits for the bridge's label cannot
		// finish before this returns.
		select {
		case err := <-passDone:
			passDone <- err
		case <-time.After(2 * time.Second):
		}
	})
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.e.testHook = nil
	select {
	case err := <-passDone:
		if err != nil {
			t.Fatalf("the reconcile pass: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reconcile pass never finished: deadlock")
	}
	if bridge == "" {
		t.Fatal("setup_service_overlay created no bridge (the test proves nothing)")
	}
	l, ok := h.net.Link(bridge)
	if !ok {
		t.Fatalf("setup_service_overlay answered ok, and the reconcile pass running meanwhile deleted its bridge %s", bridge)
	}
	if !strings.HasPrefix(l.Alias, h.e.aliasPrefix()) {
		t.Fatalf("bridge %s is labelled %q", bridge, l.Alias)
	}
}
