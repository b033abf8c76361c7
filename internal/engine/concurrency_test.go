package engine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// What the main daemon is told is what the kernel holds: each test puts a
// concurrent request (or pass) exactly between two steps of another, with
// the engine's test hook, where the old code let one undo the other.

// during runs f concurrently the first time point is reached, and gives it
// up to 200 ms to finish before the step after point goes on. Code that
// serialises correctly makes f wait for the step instead (the wait then
// just times out); code that does not lets f run into the gap.
func during(t *testing.T, e *Engine, point string, f func()) (wait func()) {
	t.Helper()
	var fired atomic.Bool
	done := make(chan struct{})
	e.testHook = func(p string) {
		// Only the first arrival waits; f itself passes the point freely.
		if p != point || !fired.CompareAndSwap(false, true) {
			return
		}
		go func() { defer close(done); f() }()
		select {
		case <-done:
		case <-time.After(200 * time.Millisecond):
		}
	}
	return func() {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("the request put at %s never finished: deadlock", point)
		}
		e.testHook = nil
	}
}

func globalPeer(pub wgtypes.Key, allowed string) protocol.AddPeer {
	return protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub.String(), Endpoint: "192.0.2.2:51820", AllowedIPs: allowed, PersistentKeepaliveSecs: 25}}
}

// 1. A peer acknowledged between reconcile's look at the desired state and
// its write to the device must not be removed by that write; a peer removed
// in that window must not come back.
func TestReconcileNeverUndoesAnAcknowledgedPeer(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	gone := newKey(t)
	h.ok(globalPeer(gone, "10.250.8.0/24"))
	added := newKey(t)
	var addResp, removeResp protocol.Response
	wait := during(t, h.e, "device.sync", func() {
		addResp = h.do(globalPeer(added, "10.250.9.0/24"))
		removeResp = h.do(protocol.RemovePeer{Pubkey: gone.String()})
	})
	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	wait()
	if _, ok := addResp.(protocol.OK); !ok {
		t.Fatalf("add_peer: %+v", addResp)
	}
	if _, ok := removeResp.(protocol.OK); !ok {
		t.Fatalf("remove_peer: %+v", removeResp)
	}
	dev := h.wg.Device("zl-prod-g")
	if dev.Peer(added) == nil {
		t.Fatal("a peer acknowledged during a reconcile pass is missing from the device")
	}
	if dev.Peer(gone) != nil {
		t.Fatal("a peer removed during a reconcile pass is back on the device")
	}
	routes, _ := h.net.Routes("zl-prod-g")
	has := func(p string) bool {
		return slices.ContainsFunc(routes, func(r linuxnet.Route) bool { return r.Dst == netip.MustParsePrefix(p) })
	}
	if !has("10.250.9.0/24") || has("10.250.8.0/24") {
		t.Fatalf("routes into the device %v: want the added peer's 10.250.9.0/24 and not the removed one's", routes)
	}
}

// 2. Two topology changes at once: the DNS configuration applied last must
// be the one of the last topology, not an older picture.
func TestDNSNeverAppliesAnOlderTopology(t *testing.T) {
	h := newDNSHarness(t, NodeListenersAuto)
	h.ok(globalReq("10.200.3.0/24"))
	var second protocol.Response
	wait := during(t, h.e, "dns.plan", func() {
		second = h.do(protocol.SetupServiceOverlay{Service: "b", Mode: "shared", Subnet: "10.90.2.0/24"})
	})
	h.ok(protocol.SetupServiceOverlay{Service: "a", Mode: "shared", Subnet: "10.90.1.0/24"})
	wait()
	if _, ok := second.(protocol.ServiceOverlay); !ok {
		t.Fatalf("second setup: %+v", second)
	}
	for _, src := range []string{"10.90.1.5", "10.90.2.5"} {
		if !h.e.dns.AllowRecursion(netip.MustParseAddr(src)) {
			t.Fatalf("the DNS policy misses the subnet of %s: an older topology was applied last", src)
		}
	}
}

// 4. teardown_service_overlay must not hand the service's carved range
// back to the node slice while its links (the members' veths) still hold
// addresses of it: allocate_ip would give them out a second time.
func TestTeardownKeepsTheRangeUntilItsLinksAreGone(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	svc := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	subnet := netip.MustParsePrefix(svc.Subnet)
	for pid := 100; pid < 104; pid++ {
		h.procs.Add(pid)
		h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web"})
	}
	detaching, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.net.OnDetach(func(string) {
		once.Do(func() { close(detaching) })
		<-release
	})
	torn := make(chan protocol.Response, 1)
	go func() { torn <- h.do(protocol.TeardownServiceOverlay{Service: "web"}) }()
	<-detaching
	// The veths are still there; take every address the slice will give.
	for range 300 {
		resp := h.do(protocol.AllocateIP{Service: "elsewhere"})
		ip, ok := resp.(protocol.IP)
		if !ok {
			break // the slice is exhausted: fine
		}
		if held := h.net.Holding(ip.IP); len(held) > 0 {
			close(release)
			t.Fatalf("allocate_ip handed out %s (in %s) while %v still hold it", ip.IP, subnet, held)
		}
	}
	close(release)
	h.net.OnDetach(nil)
	if _, ok := (<-torn).(protocol.OK); !ok {
		t.Fatal("teardown failed")
	}
}

// 5. Two setups at once must not both get overlapping explicit subnets, nor
// two dedicated services the same port.
func TestParallelServiceSetupsDoNotCollide(t *testing.T) {
	t.Run("explicit subnets", func(t *testing.T) {
		h := newHarness(t)
		h.ok(globalReq("10.200.3.0/24"))
		var second protocol.Response
		wait := during(t, h.e, "service.placed", func() {
			second = h.do(protocol.SetupServiceOverlay{Service: "b", Mode: "shared", Subnet: "10.90.0.0/23"})
		})
		first := h.do(protocol.SetupServiceOverlay{Service: "a", Mode: "shared", Subnet: "10.90.1.0/24"})
		wait()
		_, ok1 := first.(protocol.ServiceOverlay)
		_, ok2 := second.(protocol.ServiceOverlay)
		if ok1 && ok2 {
			t.Fatal("two services got the overlapping subnets 10.90.1.0/24 and 10.90.0.0/23")
		}
		if !ok1 && !ok2 {
			t.Fatalf("neither setup succeeded: %+v / %+v", first, second)
		}
	})
	t.Run("dedicated ports", func(t *testing.T) {
		h := newHarness(t)
		h.ok(globalReq("10.200.3.0/24"))
		var second protocol.Response
		wait := during(t, h.e, "service.placed", func() {
			second = h.do(protocol.SetupServiceOverlay{Service: "b", Mode: "dedicated"})
		})
		first := h.ok(protocol.SetupServiceOverlay{Service: "a", Mode: "dedicated"}).(protocol.ServiceOverlay)
		wait()
		b, ok := second.(protocol.ServiceOverlay)
		if !ok {
			t.Fatalf("second dedicated setup: %+v", second)
		}
		if first.WGPort == b.WGPort {
			t.Fatalf("two dedicated services got port %d", b.WGPort)
		}
	})
}

// 7. A reconcile pass with nothing to change changes nothing on a device:
// no peer is written (a write replaces allowed IPs, which both backends do
// by removing and re-inserting them).
func TestReconcileWithoutDriftWritesNoPeer(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "db", Mode: "dedicated"})
	for i := range 20 {
		h.ok(globalPeer(newKey(t), fmt.Sprintf("10.200.%d.0/24", 10+i)))
		h.ok(protocol.AddPeer{Scope: protocol.ServiceScope("db"), PeerSpec: protocol.PeerSpec{PublicKey: newKey(t).String(), AllowedIPs: fmt.Sprintf("10.201.%d.0/28", i)}})
	}
	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	var before []int
	devs := h.wg.Devices()
	for _, d := range devs {
		before = append(before, d.PeerWrites())
	}
	for range 3 {
		if _, err := h.e.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range devs {
		if got := d.PeerWrites() - before[i]; got != 0 {
			t.Fatalf("three reconcile passes without drift wrote %d peers to %s", got, d.Name())
		}
	}
}

// 8. A request that panics while holding the state lock must not leave it
// held: the daemon answers the panic as an err and keeps serving.
func TestPanicInARequestDoesNotDeadlockTheNext(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.Add(70)
	h.e.testHook = func(p string) {
		if p == "attach.allocate" {
			panic("injected")
		}
	}
	func() {
		defer func() { recover() }() // what ipc does with a handler panic
		h.do(protocol.AttachContainer{Handle: protocol.LinuxPID(70), Service: "web"})
	}()
	h.e.testHook = nil
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.do(protocol.Status{})
		h.do(protocol.AttachContainer{Handle: protocol.LinuxPID(70), Service: "web"})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("requests after a panic never answer: a lock was left held")
	}
}

// 11. A service grows past its first range while the node slice has room:
// a /24 slice carves /27s (29 containers each), and the 60th container of
// one service still gets an address, on the service's bridge.
func TestServiceGrowsBeyondItsFirstRange(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	first := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	slice := netip.MustParsePrefix("10.200.3.0/24")
	seen := map[netip.Addr]bool{}
	for pid := 200; pid < 260; pid++ {
		h.procs.Add(pid)
		a := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web"}).(protocol.Attached)
		if !slice.Contains(a.IP) || seen[a.IP] {
			t.Fatalf("container %d got %s (outside the slice, or twice)", pid, a.IP)
		}
		seen[a.IP] = true
		l, _ := h.net.Link(vethName(uint32(pid), 0))
		if l.Master != first.Name || l.Spec == nil || !l.Spec.Gateway.IsValid() {
			t.Fatalf("container %d is not on the service bridge with a gateway: %+v", pid, l)
		}
		bridge, _ := h.net.Link(first.Name)
		if !slices.ContainsFunc(bridge.Addrs, func(p netip.Prefix) bool { return p.Addr() == l.Spec.Gateway && p.Contains(a.IP) }) {
			t.Fatalf("container %d (%s) has gateway %s, which the bridge (%v) does not carry for its range", pid, a.IP, l.Spec.Gateway, bridge.Addrs)
		}
	}
	h.crash()
	if s := h.status(); len(s.Attachments) != 60 {
		t.Fatalf("after a restart %d attachments", len(s.Attachments))
	}
}

// 12. Two requests claiming a prefix nobody holds yet: WireGuard gives it
// to one peer, the last written, and the store must say the same — each
// request saw no holder, so neither took the prefix from the other's
// record and the store kept both.
func TestConcurrentClaimsOfAFreePrefixLeaveOneHolder(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	const contended = "10.251.0.0/24"
	first, second := newKey(t), newKey(t)
	h.ok(globalPeer(second, "10.250.2.0/24"))
	var secondResp protocol.Response
	wait := during(t, h.e, "peer.commit", func() {
		secondResp = h.do(protocol.AddAllowedIP{Pubkey: second.String(), CIDR: contended})
	})
	h.ok(globalPeer(first, "10.250.1.0/24,"+contended))
	wait()
	if _, ok := secondResp.(protocol.OK); !ok {
		t.Fatalf("add_allowed_ip: %+v", secondResp)
	}
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	var inStore []string
	for _, p := range loaded.Peers {
		if slices.Contains(p.AllowedIPs, contended) {
			inStore = append(inStore, p.PublicKey)
		}
	}
	dev := h.wg.Device("zl-prod-g")
	var onDevice []string
	for _, k := range []wgtypes.Key{first, second} {
		if slices.ContainsFunc(dev.Peer(k).AllowedIPs, func(n net.IPNet) bool { return n.String() == contended }) {
			onDevice = append(onDevice, k.String())
		}
	}
	if len(inStore) != 1 || !slices.Equal(inStore, onDevice) {
		t.Fatalf("%s is held by %v in the store and by %v on the device: want the same one peer", contended, inStore, onDevice)
	}
}
