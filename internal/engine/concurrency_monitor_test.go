package engine

import (
	"context"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// The health monitor writes what it decided from an earlier look at a peer
// (a learned endpoint, the next candidate): a request that changed or
// removed the peer in between, and was answered ok, must not be undone by
// that write. Each test puts the request between the monitor's look and its
// write with the engine's test hook, as in concurrency_test.go.

// The monitor learns a dedicated service peer's endpoint while
// teardown_service_overlay removes the service and its peers: the learned
// endpoint must not write the peer back into the store or the state, or a
// service the main daemon was told is gone keeps a peer (and a reconcile
// looks for a device that no longer exists).
func TestLearnedEndpointDoesNotResurrectATornDownServicePeer(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	svc := h.ok(protocol.SetupServiceOverlay{Service: "db", Mode: "dedicated"}).(protocol.ServiceOverlay)
	pk := newKey(t)
	h.ok(protocol.AddPeer{Scope: protocol.ServiceScope("db"), PeerSpec: protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "192.0.2.10:51820", AllowedIPs: "10.201.0.0/28", PersistentKeepaliveSecs: 25}})
	now := time.Now()
	// WireGuard roamed to an endpoint we did not configure.
	h.wg.Device(svc.Name).Handshake(pk, now, "198.51.100.7:40123")
	var torn protocol.Response
	wait := during(t, h.e, "learn.commit", func() {
		torn = h.do(protocol.TeardownServiceOverlay{Service: "db"})
	})
	h.e.checkPeers(now)
	wait()
	if _, ok := torn.(protocol.OK); !ok {
		t.Fatalf("teardown: %+v", torn)
	}
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range loaded.Peers {
		if p.Scope == scopeService("db") {
			t.Fatalf("peer %s of torn-down service db is back in the store: %+v", p.PublicKey, p)
		}
	}
	var inState bool
	h.e.locked(func() { inState = h.e.st.peers[peerKey(scopeService("db"), pk.String())] != nil })
	if inState {
		t.Fatal("peer of torn-down service db is back in the desired state")
	}
}

// The monitor decides to move an unhealthy peer to its next candidate from
// the peer's record, resolves it with no lock held, and switches after: an
// add_peer that changes the endpoint in between and is answered ok must
// keep its endpoint on the device, not a candidate of the record it
// replaced.
func TestCandidateSwitchDoesNotUndoAnAcknowledgedEndpoint(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.NAT = &NATConfig{} }) // as the daemon runs (main.go always sets NAT)
	h.ok(globalReq("10.200.3.0/24"))
	pk := newKey(t)
	spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}
	h.ok(protocol.AddPeer{PeerSpec: spec, Candidates: []string{"192.0.2.11:51820"}})
	now := time.Now()
	h.e.checkPeers(now) // never handshaken: trial of candidate 0 starts
	spec2 := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "203.0.113.5:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}
	var resp protocol.Response
	wait := during(t, h.e, "monitor.switch", func() {
		resp = h.do(protocol.AddPeer{PeerSpec: spec2})
	})
	h.e.checkPeers(now.Add(7 * time.Second)) // switches to candidate 1 (192.0.2.11)
	wait()
	if _, ok := resp.(protocol.OK); !ok {
		t.Fatalf("add_peer: %+v", resp)
	}
	if ep := h.wg.Device("zl-prod-g").Peer(pk).Endpoint.String(); ep != "203.0.113.5:51820" {
		t.Fatalf("add_peer set endpoint 203.0.113.5:51820 and was answered ok; the device has %s (a candidate of the peer's previous record)", ep)
	}
}

// Candidate switches work without NAT traversal configured (Config.NAT
// nil, as embedders and most tests run the engine): there is no relay to
// route through, and the switch must not trip over the missing NAT state.
func TestCandidateSwitchWithoutNAT(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	pk := newKey(t)
	spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}
	h.ok(protocol.AddPeer{PeerSpec: spec, Candidates: []string{"192.0.2.11:51820"}})
	now := time.Now()
	h.e.checkPeers(now)                      // never handshaken: trial of candidate 0 starts
	h.e.checkPeers(now.Add(7 * time.Second)) // candidate 0 had its chance
	if ep := h.wg.Device("zl-prod-g").Peer(pk).Endpoint.String(); ep != "192.0.2.11:51820" {
		t.Fatalf("the peer was not moved to its candidate 192.0.2.11:51820: the device has %s", ep)
	}
}

// A reconcile pass resolves a peer's host-name endpoint with no lock held,
// while an add_peer may move the peer to another endpoint and be answered
// ok. The pass must not record its answer for the endpoint the peer no
// longer has: the monitor compares the device's endpoint with what the
// requested one resolved to, and would take the acknowledged endpoint for
// one WireGuard learned, pinning the address so it is no longer looked up.
func TestResolvingPassDoesNotOutdateAnAcknowledgedEndpoint(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	pk := newKey(t)
	spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "localhost:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}
	h.ok(protocol.AddPeer{PeerSpec: spec})
	// As after a restart: nothing is resolved yet, so the pass looks the
	// name up.
	h.e.locked(func() { delete(h.e.resolved, peerKey(scopeGlobal, pk.String())) })
	spec.Endpoint = "localhost:51821"
	var resp protocol.Response
	wait := during(t, h.e, "resolve.note", func() { resp = h.do(protocol.AddPeer{PeerSpec: spec}) })
	if _, err := h.e.reconcilePass(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	wait()
	if _, ok := resp.(protocol.OK); !ok {
		t.Fatalf("add_peer: %+v", resp)
	}
	dev := h.wg.Device("zl-prod-g")
	if ep := dev.Peer(pk).Endpoint.String(); ep != "127.0.0.1:51821" {
		t.Fatalf("the device has endpoint %s; add_peer set localhost:51821", ep)
	}
	now := time.Now()
	dev.Handshake(pk, now, "127.0.0.1:51821")
	h.e.checkPeers(now)
	if p := h.e.currentPeer(scopeGlobal, pk.String()); p == nil || p.LearnedEndpoint != "" {
		t.Fatalf("the peer is at the address its requested endpoint resolves to, yet the monitor recorded a learned endpoint: %+v", p)
	}
}

// The monitor judges each peer by the device as it read it, and by the
// peer's record as it is when it gets to the peer: an add_peer that moves
// the peer to another endpoint in between, answered ok, must not have the
// endpoint it replaced recorded as one WireGuard learned (the store would
// put it back on the device at the next restore, and the main daemon
// would be told the peer is at it).
func TestLearnedEndpointIsNotAnEndpointARequestReplaced(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	pk := newKey(t)
	spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}
	h.ok(protocol.AddPeer{PeerSpec: spec})
	now := time.Now()
	h.wg.Device("zl-prod-g").Handshake(pk, now, "192.0.2.10:51820") // healthy where we put it
	moved := spec
	moved.Endpoint = "203.0.113.5:51820"
	var resp protocol.Response
	wait := during(t, h.e, "monitor.read", func() { resp = h.do(protocol.AddPeer{PeerSpec: moved}) })
	h.e.checkPeers(now)
	wait()
	if _, ok := resp.(protocol.OK); !ok {
		t.Fatalf("add_peer: %+v", resp)
	}
	if p := h.e.currentPeer(scopeGlobal, pk.String()); p == nil || p.LearnedEndpoint != "" {
		t.Fatalf("add_peer moved the peer to 203.0.113.5:51820 and was answered ok; its record now says WireGuard learned %q", p.LearnedEndpoint)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ev := range h.events {
		if c, ok := ev.(protocol.NATEndpointChanged); ok && c.Pubkey == pk.String() {
			t.Fatalf("the main daemon was told the peer moved to %s after it moved it to 203.0.113.5:51820", c.Endpoint)
		}
	}
}

// The same for a candidate switch: the peer looked unhealthy on the
// endpoint it was being tried at when the device was read; an add_peer
// that gives it a new endpoint before the monitor gets to it must keep that
// endpoint on the device, to be tried first, not see it replaced at once
// by the next candidate of the old trial.
func TestCandidateSwitchDoesNotUndoAnEndpointSetAfterTheRead(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.NAT = &NATConfig{} })
	h.ok(globalReq("10.200.3.0/24"))
	pk := newKey(t)
	cands := []string{"192.0.2.11:51820", "192.0.2.12:51820"}
	spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}
	h.ok(protocol.AddPeer{PeerSpec: spec, Candidates: cands})
	now := time.Now()
	h.e.checkPeers(now) // never handshaken: trial of the endpoint starts
	moved := spec
	moved.Endpoint = "203.0.113.5:51820"
	var resp protocol.Response
	wait := during(t, h.e, "monitor.read", func() { resp = h.do(protocol.AddPeer{PeerSpec: moved, Candidates: cands}) })
	h.e.checkPeers(now.Add(7 * time.Second))
	wait()
	if _, ok := resp.(protocol.OK); !ok {
		t.Fatalf("add_peer: %+v", resp)
	}
	if ep := h.wg.Device("zl-prod-g").Peer(pk).Endpoint.String(); ep != "203.0.113.5:51820" {
		t.Fatalf("add_peer set endpoint 203.0.113.5:51820 and was answered ok; the monitor replaced it with %s at once", ep)
	}
}
