package engine

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// An attach of a recycled PID forgets the dead process's attachment, which
// may belong to another service; a teardown of that service forgets its
// members. Both forgetting one record released its addresses twice: the
// second release freed the node-slice address the new attach had just been
// given, and allocate_ip handed it out again. The attach must hold the old
// service's lock, so the two take turns and the second finds nothing.
func TestRecycledPIDAndTeardownDoNotFreeAnAddressTwice(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "a", Mode: "shared"})
	h.ok(protocol.SetupServiceOverlay{Service: "b", Mode: "shared"})
	h.procs.Add(300)
	old := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(300), Service: "a", JoinGlobal: true}).(protocol.Attached)
	h.procs.Kill(300)
	h.procs.Add(300) // the PID is recycled: a new process
	sliceFree := func(a netip.Addr) (free bool) {
		h.e.locked(func() { free = !h.e.st.slicePool.IsAllocated(a) })
		return free
	}
	// The teardown runs at the attach's settle step and its release goes
	// through; the attach's own release of the same record (if it makes
	// one) is held until the attach has taken its new addresses.
	blockSecond := make(chan struct{})
	var phase atomic.Int32
	torn := make(chan protocol.Response, 1)
	h.e.testHook = func(p string) {
		switch {
		case p == "attach.settle" && phase.CompareAndSwap(0, 1):
			go func() { torn <- h.do(protocol.TeardownServiceOverlay{Service: "a"}) }()
			// Unless it waits for the attach's locks, the teardown
			// releases the old address within this time.
			for deadline := time.Now().Add(200 * time.Millisecond); !sliceFree(old.GlobalIP) && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			h.net.OnDetach(func(string) { <-blockSecond })
		case p == "attach.allocate" && phase.CompareAndSwap(1, 2):
			close(blockSecond)
		}
	}
	resp := h.do(protocol.AttachContainer{Handle: protocol.LinuxPID(300), Service: "b", JoinGlobal: true})
	h.e.testHook = nil
	if phase.CompareAndSwap(1, 2) {
		close(blockSecond)
	}
	att, ok := resp.(protocol.Attached)
	if !ok {
		t.Fatalf("attach: %+v", resp)
	}
	var tornResp protocol.Response
	select {
	case tornResp = <-torn:
	case <-time.After(30 * time.Second):
		t.Fatal("the teardown never finished: deadlock")
	}
	h.e.bg.Wait()
	h.net.OnDetach(nil)
	if _, ok := tornResp.(protocol.OK); !ok {
		t.Fatalf("teardown: %+v", tornResp)
	}
	if sliceFree(att.GlobalIP) {
		t.Fatalf("the new attach holds global IP %s (the old one was %s), and the node slice has it free to hand out again", att.GlobalIP, old.GlobalIP)
	}
	if ip, handed := h.drainSlice(func(a netip.Addr) bool { return a == att.GlobalIP }); handed {
		t.Fatalf("allocate_ip handed out %s, the global IP of the attached container", ip)
	}
}

// A detach answers before the kernel has removed the container's links;
// an attach of the same container meanwhile waits for that removal, since
// the links it builds have the same names. When the removal takes longer
// than the attach will wait, the attach must be refused: going ahead, it
// answered ok and built links that the old removal then deleted, leaving
// an acknowledged container without its eth0 until some reconcile pass.
func TestAttachDuringASlowDetachIsRefusedNotUndone(t *testing.T) {
	h := newHarness(t)
	h.e.detachWait = 50 * time.Millisecond
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.Add(100)
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(100), Service: "web"})
	link := h.status().Attachments[0].HostLink

	release := make(chan struct{})
	h.net.OnDetach(func(string) { <-release })
	h.ok(protocol.DetachContainer{Handle: protocol.LinuxPID(100)})
	resp := h.do(protocol.AttachContainer{Handle: protocol.LinuxPID(100), Service: "web"})
	close(release)
	h.e.bg.Wait()
	h.net.OnDetach(nil)

	e, refused := resp.(protocol.Err)
	if !refused {
		if !h.net.Has(link) {
			t.Fatalf("attach answered %+v, but %s is gone: the old detach removed the new link", resp, link)
		}
		t.Fatalf("attach answered %+v while the old %s was still being removed", resp, link)
	}
	if !strings.Contains(e.Message, link) || !strings.Contains(e.Message, "retry") {
		t.Fatalf("the attach was refused without saying why: %s", e.Message)
	}
	if n := len(h.status().Attachments); n != 0 {
		t.Fatalf("the refused attach left %d attachments", n)
	}
	// The removal has finished: the retry goes through and keeps its link.
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(100), Service: "web"})
	h.e.bg.Wait()
	if !h.net.Has(link) {
		t.Fatalf("the retried attach answered ok, but %s is gone", link)
	}
}
