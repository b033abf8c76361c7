package engine

import (
	"net"
	"slices"
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// VM guests' peers are global peers like any other: a request that gives
// a guest's address to another peer changes the guest's record, and a
// guest attach or detach changes who holds the address. Each test puts one
// between two steps of the other (see during in concurrency_test.go).

// A detach of a guest while add_allowed_ip gives the guest's /32 to another
// peer (the VM moved to another node): the guest's peer is gone, and the
// claim must not write it back as the peer it took the prefix from — the
// store would keep a peer nobody attached, and reconcile would put it back
// on the device.
func TestClaimOfAGuestAddressDoesNotResurrectTheDetachedGuest(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	gc := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"}).(protocol.GuestConfig)
	other := newKey(t)
	h.ok(globalPeer(other, "10.200.9.0/24"))
	var detached protocol.Response
	wait := during(t, h.e, "peer.commit", func() {
		detached = h.do(protocol.DetachContainer{Handle: protocol.GuestManaged("vm-1")})
	})
	h.ok(protocol.AddAllowedIP{Pubkey: other.String(), CIDR: gc.OverlayIP.String() + "/32"})
	wait()
	if _, ok := detached.(protocol.OK); !ok {
		t.Fatalf("detach: %+v", detached)
	}
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range loaded.Peers {
		if p.PublicKey == gc.PublicKey {
			t.Fatalf("the detached guest's peer is back in the store: %+v", p)
		}
	}
}

// The same with a repeated attach of the guest, which replaces its key:
// the old key's peer must stay gone, and the /32 must end up on one peer
// (WireGuard gives it to one).
func TestClaimOfAGuestAddressDoesNotResurrectTheReplacedGuestKey(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	gc := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"}).(protocol.GuestConfig)
	contended := gc.OverlayIP.String() + "/32"
	other := newKey(t)
	h.ok(globalPeer(other, "10.200.9.0/24"))
	var again protocol.Response
	wait := during(t, h.e, "peer.commit", func() {
		again = h.do(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"})
	})
	h.ok(protocol.AddAllowedIP{Pubkey: other.String(), CIDR: contended})
	wait()
	gc2, ok := again.(protocol.GuestConfig)
	if !ok {
		t.Fatalf("guest re-attach: %+v", again)
	}
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	var holders []string
	for _, p := range loaded.Peers {
		if p.PublicKey == gc.PublicKey {
			t.Fatalf("the guest's replaced key %s is back in the store: %+v (its new key is %s)", gc.PublicKey, p, gc2.PublicKey)
		}
		if slices.Contains(p.AllowedIPs, contended) {
			holders = append(holders, p.PublicKey)
		}
	}
	if len(holders) != 1 {
		t.Fatalf("%s is held by %d peers in the store (%v): WireGuard gives it to one", contended, len(holders), holders)
	}
}

// A first guest attach gives the guest's /32 to its new peer; a peer that
// holds the same /32 (given by the main daemon before, or by an add_peer at
// the same time) loses it on the device, and must lose it in the store too,
// or the store keeps the prefix on two peers.
func TestGuestAttachAndAClaimOfItsAddressLeaveOneHolder(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	const contended = "10.200.3.2/32" // the first free address of the slice: the guest's
	other := newKey(t)
	var gresp protocol.Response
	wait := during(t, h.e, "peer.commit", func() {
		gresp = h.do(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"})
	})
	h.ok(globalPeer(other, contended))
	wait()
	gc, ok := gresp.(protocol.GuestConfig)
	if !ok {
		t.Fatalf("guest attach: %+v", gresp)
	}
	if gc.OverlayIP.String()+"/32" != contended {
		t.Skipf("the guest got %s, not %s", gc.OverlayIP, contended)
	}
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	var holders []string
	for _, p := range loaded.Peers {
		if slices.Contains(p.AllowedIPs, contended) {
			holders = append(holders, p.PublicKey)
		}
	}
	if len(holders) != 1 {
		t.Fatalf("%s is held by %d peers in the store (%v): WireGuard gives it to one", contended, len(holders), holders)
	}
}

// The same without a race: the main daemon gave the /32 to a peer before
// the slice handed it to a guest. The guest's peer is configured last, so
// WireGuard gives it the prefix, and the store must say so.
func TestGuestAttachTakesItsAddressFromThePeerHoldingIt(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	const contended = "10.200.3.2/32" // the first free address of the slice: the guest's
	other := newKey(t)
	h.ok(globalPeer(other, "10.250.1.0/24,"+contended))
	gc := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"}).(protocol.GuestConfig)
	if gc.OverlayIP.String()+"/32" != contended {
		t.Skipf("the guest got %s, not %s", gc.OverlayIP, contended)
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
	var onDevice []string
	for _, k := range []string{other.String(), gc.PublicKey} {
		if slices.ContainsFunc(h.wg.Device("zl-prod-g").Peer(mustKey(k)).AllowedIPs, func(n net.IPNet) bool { return n.String() == contended }) {
			onDevice = append(onDevice, k)
		}
	}
	if len(inStore) != 1 || !slices.Equal(inStore, onDevice) {
		t.Fatalf("%s is held by %v in the store and by %v on the device: want the same one peer", contended, inStore, onDevice)
	}
}

// The same with a teardown of the guest's service, which detaches the
// guest among its members: the guest's peer must stay gone.
func TestClaimOfAGuestAddressDoesNotResurrectATornDownGuest(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	gc := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"}).(protocol.GuestConfig)
	other := newKey(t)
	h.ok(globalPeer(other, "10.200.9.0/24"))
	var torn protocol.Response
	wait := during(t, h.e, "peer.commit", func() {
		torn = h.do(protocol.TeardownServiceOverlay{Service: "web"})
	})
	h.ok(protocol.AddAllowedIP{Pubkey: other.String(), CIDR: gc.OverlayIP.String() + "/32"})
	wait()
	if _, ok := torn.(protocol.OK); !ok {
		t.Fatalf("teardown: %+v", torn)
	}
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range loaded.Peers {
		if p.PublicKey == gc.PublicKey {
			t.Fatalf("the torn-down service's guest peer is back in the store: %+v", p)
		}
	}
}

// A repeated attach of a guest whose peer the main daemon removed, which
// the device then refuses, puts the guest's record back as it was: the
// undo must not assume the old peer still exists.
func TestRefusedReattachOfAGuestWithoutItsPeerIsUndone(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	gc := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"}).(protocol.GuestConfig)
	h.ok(protocol.RemovePeer{Pubkey: gc.PublicKey})
	h.wg.Device("zl-prod-g").Close() // the next write to it fails
	var resp protocol.Response
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("the refused re-attach panicked: %v", r)
			}
		}()
		resp = h.do(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"})
	}()
	if _, ok := resp.(protocol.Err); !ok {
		t.Fatalf("re-attach on a closed device answered %+v, want an err", resp)
	}
	var kept bool
	h.e.locked(func() { kept = h.e.st.attach[handleKey(protocol.GuestManaged("vm-1"))] != nil })
	if !kept {
		t.Fatal("the refused re-attach dropped the guest's attachment")
	}
}
