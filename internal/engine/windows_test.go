package engine

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// fakeHCN is the Host Compute Network service in memory: endpoints by
// namespace GUID.
type fakeHCN struct {
	mu        sync.Mutex
	next      int
	endpoints map[string]netip.Addr
}

func (f *fakeHCN) EnsureNetwork(context.Context, HCNNetwork) error { return nil }
func (f *fakeHCN) DeleteNetwork(context.Context, string) error     { return nil }

func (f *fakeHCN) Attach(_ context.Context, a HCNAttach) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	guid := fmt.Sprintf("00000000-0000-0000-0000-%012d", f.next)
	f.endpoints[guid] = a.IP
	return guid, nil
}

func (f *fakeHCN) Detach(_ context.Context, guid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.endpoints, guid) // an unknown GUID is fine, as in HNS
	return nil
}

func (f *fakeHCN) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.endpoints)
}

// 6. A Windows detach removes the HCN endpoint between two commits. A crash
// right after the endpoint went must not leave the attachment's address
// held by nothing for good: the restart finishes the detach.
func TestInterruptedWindowsDetachIsFinishedByTheRestart(t *testing.T) {
	hcn := &fakeHCN{endpoints: map[string]netip.Addr{}}
	h := newHarnessWith(t, func(c *Config) {
		c.HCN = hcn
		c.Caps = Capabilities{NoBridges: true, Platform: "windows"}
	})
	h.ok(globalReq("10.200.3.0/28"))
	att := h.ok(protocol.AttachContainer{Handle: protocol.WindowsContainer("ctr-1", netip.Addr{}), Service: "web"}).(protocol.Attached)
	h.e.testHook = func(p string) {
		if p == "windows.detached" {
			panic("crash")
		}
	}
	func() {
		defer func() { recover() }()
		h.do(protocol.DetachContainer{Handle: protocol.WindowsContainer(att.NamespaceGUID, netip.Addr{})})
	}()
	h.e.testHook = nil
	if hcn.count() != 0 {
		t.Fatal("the endpoint should be gone before the crash")
	}
	h.crash()
	if s := h.status(); s.SlicePool == nil || s.SlicePool.Used != 1 {
		t.Fatalf("after the restart the slice still has %+v in use: the container's address leaked", s.SlicePool)
	}
	// Every address of the /28 but the node IP can be had again.
	for i := range 13 {
		h.ok(protocol.AttachContainer{Handle: protocol.WindowsContainer(fmt.Sprint("ctr-again-", i), netip.Addr{}), Service: "web"})
	}
}
