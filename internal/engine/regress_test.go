package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Regression tests for bugs the chaos suites (internal/chaos) found.

// The host route of a container's eth1 names the node IP as its source, and
// the kernel drops it when that address disappears: a SIGKILLed daemon's
// userspace device dies with it, the container's links survive. The restart
// must put the route back, or the container is cut off from the overlay.
func TestRestartRestoresTheHostRouteOfJoinGlobalContainers(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.Add(30)
	a := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(30), Service: "web", JoinGlobal: true}).(protocol.Attached)
	route := netip.PrefixFrom(a.GlobalIP, 32)
	h.net.DeleteRoute(linuxnet.Route{Dst: route, Dev: "zl-v30-e1"}) // what the kernel does when the device dies
	attaches := h.net.Attaches()
	h.crash()
	routes, _ := h.net.Routes("zl-v30-e1")
	if len(routes) != 1 || routes[0].Dst != route || routes[0].Src != netip.MustParseAddr("10.200.3.1") {
		t.Fatalf("host routes of eth1 after the restart: %+v, want %s src 10.200.3.1", routes, route)
	}
	if h.net.Attaches() != attaches {
		t.Fatal("the repair re-created the container's links instead of adding the route")
	}
}

// The kernel ignores a label given when a link is created, so an attach
// killed between creating the veth pair and labelling it leaves an
// unlabelled zl-v<pid>-e<n> in the node and its other end in the container.
// The restart removes it; unlabelled links named otherwise stay untouched.
func TestRestartRemovesTheUnlabelledVethOfAnInterruptedAttach(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.Add(40)
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(40), Service: "web"})
	h.net.AddLink("zl-v41-e1", enginetest.Link{Kind: "veth", Spec: &linuxnet.AttachSpec{PID: 41}})
	h.net.AddLink("veth-foreign", enginetest.Link{Kind: "veth", Spec: &linuxnet.AttachSpec{PID: 42}})
	h.net.AddLink("zl-v43-e0", enginetest.Link{Kind: "bridge"})
	// At run time a request of ours may be between creating and labelling:
	// only the start-up reconcile may judge unlabelled links.
	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !h.net.Has("zl-v41-e1") {
		t.Fatal("a periodic reconcile deleted an unlabelled veth")
	}
	h.crash()
	if got, want := h.net.Veths(), []string{"veth-foreign", "zl-v40-e0"}; !slices.Equal(got, want) {
		t.Fatalf("veths after the restart %v, want %v", got, want)
	}
	if !h.net.Has("zl-v43-e0") {
		t.Fatal("the restart deleted an unlabelled link that is not a veth")
	}
}

// An attach labels its links before it records the attachment in the
// state. A periodic reconcile that looks in between must not take them for
// orphans: it waits for the request instead.
func TestReconcileLeavesTheLinksOfAnAttachInFlight(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.Add(50)
	calls := 0
	reconciled := make(chan error, 1)
	h.procs.OnStart(func(pid int) {
		if pid != 50 {
			return
		}
		if calls++; calls != 2 {
			return
		}
		// The second look at the process comes after the links were
		// built and before the attachment is committed.
		go func() {
			var n int
			reconciled <- h.e.removeOrphanLinks(context.Background(), &n, false)
		}()
		select {
		case err := <-reconciled:
			reconciled <- err
		case <-time.After(200 * time.Millisecond): // blocked on the container's lock, as it should be
		}
	})
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(50), Service: "web", JoinGlobal: true})
	if err := <-reconciled; err != nil {
		t.Fatal(err)
	}
	h.procs.OnStart(nil)
	if got, want := h.net.Veths(), []string{"zl-v50-e0", "zl-v50-e1"}; !slices.Equal(got, want) {
		t.Fatalf("veths after an attach that raced a reconcile: %v, want %v", got, want)
	}
}

// Requests may be megabytes long; a refusal quotes the offending value cut
// short instead of echoing it (sometimes twice, through net and net/netip
// errors) into the log and an err answer that might no longer fit a frame.
func TestRefusalsDoNotEchoHugeInput(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	long := strings.Repeat("9", 1<<20)
	key := newKey(t).String()
	for _, req := range []protocol.Request{
		protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: long + "/16", WGPort: 1},
		protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.0.0.0/" + long},
		protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: key, AllowedIPs: "10.0.0.0/8," + long}},
		protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: key, Endpoint: long}},
		protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: key, Endpoint: "[" + long + "]:1"}},
		protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: key, Endpoint: "host:" + long}},
		protocol.AddAllowedIP{Pubkey: key, CIDR: "::" + long},
	} {
		if msg := h.fails(req); len(msg) > 300 {
			t.Errorf("%s: a %d-byte refusal: %.100q…", req.Op(), len(msg), msg)
		}
	}
	e := newDNSEngine(t)
	for _, req := range []protocol.Request{
		protocol.RegisterDNS{Name: long, IP: netip.MustParseAddr("10.200.3.9")},
		protocol.UnregisterDNS{Name: long},
	} {
		resp, ok := e.Handle(context.Background(), req).(protocol.Err)
		if !ok || len(resp.Message) > 300 {
			t.Errorf("%s: a %d-byte refusal (%t): %.100q…", req.Op(), len(resp.Message), ok, resp.Message)
		}
	}
}

// newDNSEngine is an engine with the embedded DNS server and nothing else.
func newDNSEngine(t *testing.T) *Engine {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), store.FileName), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dns.New(dns.Config{Zone: "zltr.local"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Store: st, DNS: &DNSConfig{Server: srv}, ReconcileInterval: -1, HealthInterval: -1, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); srv.Close(); st.Close() })
	return e
}

// Base64 spells a key more than one way (line breaks are skipped, the two
// spare bits of the last character are ignored). The key the main daemon
// sends for this node is compared as a key, not as a string: the same key
// spelled differently is no mismatch.
func TestExpectedPubkeyIsComparedAsAKey(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	pub := h.status().PublicKey
	last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", pub[42])
	spare := pub[:42] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[last|1]) + "="
	for _, spelling := range []string{pub[:20] + "\n" + pub[20:], spare} {
		h.ok(protocol.SetLocalWGPubkey{Pubkey: spelling})
		if s := h.status(); s.PubkeyMismatch || s.ExpectedPubkey != pub || len(s.Warnings) > 0 {
			t.Fatalf("%q, our own key spelled differently, reported as %q, mismatch %t, warnings %q", spelling, s.ExpectedPubkey, s.PubkeyMismatch, s.Warnings)
		}
	}
}

// set_local_node_id, set_local_wg_pubkey and setup_global_overlay each
// rewrite the node record from a copy. Run side by side, none may undo
// another: not in memory, and not in the store (what a restart sees).
func TestNodeRecordUpdatesDoNotLoseEachOther(t *testing.T) {
	h := newHarness(t)
	for i := range 50 {
		id := uint64(100 + i)
		key := newKey(t).String()
		slice := fmt.Sprintf("10.200.%d.0/24", i)
		var wg sync.WaitGroup
		for _, req := range []protocol.Request{protocol.SetLocalNodeID{NodeID: id}, protocol.SetLocalWGPubkey{Pubkey: key}, globalReq(slice)} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if e, bad := h.do(req).(protocol.Err); bad {
					t.Errorf("%s: %s", req.Op(), e.Message)
				}
			}()
		}
		wg.Wait()
		check := func(when string) {
			s := h.status()
			if s.NodeID != id || s.ExpectedPubkey != key || s.SliceCIDR != slice || s.PublicKey == "" {
				t.Fatalf("round %d, %s: node id %d key %s slice %s public key %q; want %d %s %s", i, when, s.NodeID, s.ExpectedPubkey, s.SliceCIDR, s.PublicKey, id, key, slice)
			}
		}
		check("running")
		pub := h.status().PublicKey
		h.crash()
		check("after a restart")
		if got := h.status().PublicKey; got != pub {
			t.Fatalf("round %d: the node's key changed across a restart: %s -> %s", i, pub, got)
		}
	}
}

// A prefix belongs to the last peer that claims it (add_peer or
// add_allowed_ip), as in WireGuard; the store must say so too, or a
// restart, which configures peers in key order, may give it back.
func TestAClaimedPrefixLeavesItsPreviousPeerInTheStore(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	first, second := newKey(t).String(), newKey(t).String()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: first, AllowedIPs: "10.99.1.0/24,10.99.2.0/24,10.99.3.0/24"}})
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: second, AllowedIPs: "10.99.1.0/24"}})
	h.ok(protocol.AddAllowedIP{Pubkey: second, CIDR: "10.99.2.0/24"})
	h.crash()
	got := map[string]string{}
	for _, p := range h.status().Peers {
		got[p.PublicKey] = p.AllowedIPs
	}
	if got[first] != "10.99.3.0/24" || got[second] != "10.99.1.0/24,10.99.2.0/24" {
		t.Fatalf("after a restart: first %q, second %q; want 10.99.3.0/24 and 10.99.1.0/24,10.99.2.0/24", got[first], got[second])
	}
}

// teardown_global_overlay takes the node IP away and the kernel the host
// routes of join_global containers with it; the next setup_global_overlay
// must put them back at once, not at the next reconcile.
func TestGlobalSetupAfterTeardownRestoresHostRoutes(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.Add(60)
	a := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(60), Service: "web", JoinGlobal: true}).(protocol.Attached)
	h.ok(protocol.TeardownGlobalOverlay{})
	h.net.DeleteRoute(linuxnet.Route{Dst: netip.PrefixFrom(a.GlobalIP, 32), Dev: "zl-v60-e1"}) // what the kernel does
	h.ok(globalReq("10.200.3.0/24"))
	if routes, _ := h.net.Routes("zl-v60-e1"); len(routes) != 1 || routes[0].Dst != netip.PrefixFrom(a.GlobalIP, 32) {
		t.Fatalf("host routes of eth1 after the global overlay came back: %+v", routes)
	}
}

// A node whose global overlay is torn down keeps its slice to get the same
// node IP back; meanwhile nothing may hand that address out, or the next
// setup_global_overlay fails (and the node cannot rejoin) until it is
// released. Across a restart too.
func TestTheNodeIPWaitsForTheNextGlobalSetup(t *testing.T) {
	for _, restart := range []bool{false, true} {
		h := newHarness(t)
		h.ok(globalReq("10.200.3.0/24"))
		h.ok(protocol.TeardownGlobalOverlay{})
		if restart {
			h.crash()
		}
		for range 3 {
			if ip := h.ok(protocol.AllocateIP{Service: "any"}).(protocol.IP).IP; ip == netip.MustParseAddr("10.200.3.1") {
				t.Fatalf("restart %t: allocate_ip handed out the node IP of a torn-down global overlay", restart)
			}
		}
		h.ok(globalReq("10.200.3.0/24"))
		if s := h.status(); s.NodeIP != netip.MustParseAddr("10.200.3.1") || s.SlicePool.Used != 4 {
			t.Fatalf("restart %t: node IP %s, slice addresses in use %d (want 10.200.3.1 and 4)", restart, s.NodeIP, s.SlicePool.Used)
		}
	}
}

// Attaching a guest again rotates its key and keeps its address, also when
// a lower address of the slice has become free in between.
func TestAGuestAttachedAgainKeepsItsAddress(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	guest := func(id string) protocol.GuestConfig {
		return h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged(id), Service: "web", JoinGlobal: true}).(protocol.GuestConfig)
	}
	first := guest("vm-1")
	second := guest("vm-2")
	h.ok(protocol.DetachContainer{Handle: protocol.GuestManaged("vm-1")})
	again := guest("vm-2")
	if again.OverlayIP != second.OverlayIP || again.PublicKey == second.PublicKey {
		t.Fatalf("vm-2 attached again: %s key %s, was %s key %s (vm-1 had %s)", again.OverlayIP, again.PublicKey, second.OverlayIP, second.PublicKey, first.OverlayIP)
	}
}
