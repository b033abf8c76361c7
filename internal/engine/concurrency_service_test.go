package engine

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Races between requests that place service ranges in the node slice (see
// concurrency_test.go for how each test puts one request into another's
// gap). A range excluded from the slice pool is not free for an explicit
// subnet: it may belong to a service growing into it or to one giving it
// back, and two services must never own one range.

// 13. A torn-down service's carved range goes back to the node slice once
// its links are gone. A setup asking for that range as its explicit subnet
// meanwhile must be refused (the range's addresses are still in containers,
// and the return would put it back into the pool under the new service);
// once the range is back, the retry gets it and keeps it out of the pool.
func TestReturnedRangeIsNotGivenBackWhileAnotherServiceHoldsIt(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	web := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	h.procs.Add(100)
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(100), Service: "web"})
	detaching, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.net.OnDetach(func(string) {
		once.Do(func() { close(detaching) })
		<-release
	})
	h.ok(protocol.TeardownServiceOverlay{Service: "web"})
	<-detaching
	// The main daemon reuses the subnet for another service.
	api := protocol.SetupServiceOverlay{Service: "api", Mode: "shared", Subnet: web.Subnet}
	early := h.do(api)
	close(release)
	h.e.bg.Wait() // the link deletion and the range's return
	h.net.OnDetach(nil)
	if e, refused := early.(protocol.Err); refused {
		if !strings.Contains(e.Message, web.Subnet) || !strings.Contains(e.Message, "web") || !strings.Contains(e.Message, "retry") {
			t.Fatalf("setup of api on %s was refused without saying why: %s", web.Subnet, e.Message)
		}
		var left bool
		h.e.locked(func() { left = h.e.st.services["api"] != nil || len(h.e.st.pendingSubnets) > 0 })
		if left {
			t.Fatal("the refused setup of api left its placement behind")
		}
		h.ok(api) // the range is back: the retry gets it
	}
	subnet := netip.MustParsePrefix(web.Subnet)
	if ip, handed := h.drainSlice(subnet.Contains); handed {
		t.Fatalf("allocate_ip handed out %s from the node slice, inside %s, the subnet of service api", ip, subnet)
	}
}

// 14. A service growing by a range carved from the node slice does not own
// it until the grow commits: a setup with that range as its explicit subnet
// meanwhile must be refused (or the grow must not keep it), never both
// services get it.
func TestGrowingServiceAndExplicitSetupDoNotShareARange(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	var grown netip.Prefix
	var second protocol.Response
	var fired atomic.Bool
	done := make(chan struct{})
	h.e.testHook = func(p string) {
		if p != "service.grow" || !fired.CompareAndSwap(false, true) {
			return
		}
		// The range just carved: the slice pool's newest exclusion.
		h.e.locked(func() {
			ex := h.e.st.slicePool.Excluded()
			grown = ex[len(ex)-1]
		})
		go func() {
			defer close(done)
			second = h.do(protocol.SetupServiceOverlay{Service: "api", Mode: "shared", Subnet: grown.String()})
		}()
		select {
		case <-done:
		case <-time.After(200 * time.Millisecond):
		}
	}
	var last protocol.Attached
	for pid := 400; !fired.Load() && pid < 500; pid++ {
		h.procs.Add(pid)
		last = h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web"}).(protocol.Attached)
	}
	if !fired.Load() {
		t.Fatal("web never grew")
	}
	<-done
	h.e.testHook = nil
	var webHas, apiLeft bool
	h.e.locked(func() {
		webHas = slices.Contains(h.e.st.services["web"].subnets(), grown)
		apiLeft = h.e.st.services["api"] != nil || len(h.e.st.pendingSubnets) > 0
	})
	if e, refused := second.(protocol.Err); refused {
		if !strings.Contains(e.Message, grown.String()) || !strings.Contains(e.Message, "web") {
			t.Fatalf("setup of api on %s was refused without saying why: %s", grown, e.Message)
		}
		if apiLeft {
			t.Fatal("the refused setup of api left its placement behind")
		}
		return
	}
	if webHas {
		t.Fatalf("api was set up on %s while web grew by it (web's last container got %s): %+v", grown, last.IP, second)
	}
}

// While a torn-down service's range waits for its containers' links to go,
// nothing else may hand out its addresses: not a repeated
// setup_global_overlay, which rebuilds the slice pool (the main daemon
// repeats it at every start), and not a setup of the same service again,
// which the main daemon does on a redeploy and which must keep working
// (the range is the service's own again, and is not given back under it).
func TestGivingARangeBackSurvivesGlobalRepeatAndSameNameSetup(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	web := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.200.3.128/26"}).(protocol.ServiceOverlay)
	subnet := netip.MustParsePrefix(web.Subnet)
	h.procs.Add(100)
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(100), Service: "web"})
	detaching, release := make(chan struct{}), make(chan struct{})
	letGo := sync.OnceFunc(func() { close(release) })
	t.Cleanup(letGo) // a failure must not leave the engine's Close waiting on the link
	var once sync.Once
	h.net.OnDetach(func(string) {
		once.Do(func() { close(detaching) })
		<-release
	})
	h.ok(protocol.TeardownServiceOverlay{Service: "web"})
	<-detaching
	h.ok(globalReq("10.200.3.0/24"))
	if ip, handed := h.drainSlice(subnet.Contains); handed {
		t.Fatalf("after a repeated setup_global_overlay, allocate_ip handed out %s inside %s, which torn-down web's container still has", ip, subnet)
	}
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: web.Subnet})
	letGo()
	h.e.bg.Wait()
	h.net.OnDetach(nil)
	var inPool bool
	h.e.locked(func() { inPool = !h.e.st.slicePool.IsExcluded(subnet.Addr().Next()) })
	if inPool {
		t.Fatalf("the return of torn-down web's %s put it back into the slice pool under the new web", subnet)
	}
}
