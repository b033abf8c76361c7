package engine

import (
	"context"
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// status is the request the main daemon sends most, and its sequential
// round trip is held against a bare echo server's (issue 22). It was 8
// allocations on a node with nothing set up, 4 of them a request deadline
// status never waits on, and 1.1 x the echo's p50.
func TestStatusAllocatesOnlyItsAnswer(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(200, func() {
		if _, ok := h.e.Handle(ctx, protocol.Status{}).(protocol.StatusResult); !ok {
			t.Fatal("status did not answer with a status")
		}
	})
	t.Logf("%.1f allocations per status", allocs)
	if allocs > 5 {
		t.Errorf("status on a bare node allocates %.0f times per request, want at most 5", allocs)
	}
}
