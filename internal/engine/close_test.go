package engine

import (
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// The daemon closes the engine once the server's shutdown stopped waiting
// for the requests in flight (10 s); one still running must not start
// background work then: Close has stopped waiting for it (and a WaitGroup
// may not go up from zero while Wait runs). A detach that forgets its
// attachment after Close leaves the links to the next start's reconcile,
// as a crash at that point would.
func TestNoBackgroundWorkStartsAfterClose(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "a", Mode: "shared"})
	h.procs.Add(300)
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(300), Service: "a", JoinGlobal: true})
	const link = "zl-v300-e0"
	if !h.net.Has(link) {
		t.Fatalf("attach made no link %s", link)
	}
	detached := make(chan string, 4)
	h.net.OnDetach(func(name string) { detached <- name })
	var done <-chan struct{}
	h.e.testHook = func(p string) {
		if p != "attach.forgotten" {
			return
		}
		// The request has committed the detach; the daemon closes the
		// engine before it starts deleting the links.
		h.e.Close()
		v, ok := h.e.detaching.Load(link)
		if !ok {
			t.Errorf("%s not marked as being deleted", link)
			return
		}
		done = v.(chan struct{})
	}
	h.ok(protocol.DetachContainer{Handle: protocol.LinuxPID(300)})
	h.e.testHook = nil
	if done == nil {
		t.Fatal("the detach never reached attach.forgotten")
	}
	// Closed whether the deletion ran or was refused: a refused one must
	// not leave requests waiting for it.
	<-done
	select {
	case name := <-detached:
		t.Fatalf("link %s deleted by a goroutine started after Close returned", name)
	default:
	}
	if _, ok := h.e.detaching.Load(link); ok {
		t.Errorf("%s still marked as being deleted", link)
	}
}
