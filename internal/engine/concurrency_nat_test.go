package engine

import (
	"context"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/firewall"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/conn"
)

// NAT traversal and the firewall follow the overlay from beside the
// requests: a failed or concurrent request must not leave them serving
// something the main daemon was not told of, and what a request was
// answered ok for must not be undone by them.

// A setup_global_overlay that opens a new device (a new deployment name)
// and fails leaves the global device as it was; its NAT-traversal bind must
// stay the one STUN probes, candidate switches and the TURN relay use. The
// failed setup made the bind of its never-published device the engine's,
// so the live device lost NAT traversal: probes failed on a closed socket,
// relay routes went to a bind nothing sends through, and the relay was
// attached there (or, when the failed request had no TURN servers,
// stopped).
func TestFailedGlobalSetupKeepsTheLiveDevicesNATBind(t *testing.T) {
	h := newHarnessOn(t, wg.KindUserspace, func(c *Config) {
		c.NAT = &NATConfig{Servers: []string{"192.0.2.1:3478"}, RefreshInterval: -1}
	})
	h.ok(globalReq("10.200.3.0/24"))
	live := h.e.natBind()
	if live == nil {
		t.Fatal("no NAT-traversal bind on the global device with STUN servers configured")
	}
	// The renamed deployment's device cannot open: its name is taken.
	renamed := globalReq("10.200.3.0/24")
	renamed.Deployment = "staging"
	if _, err := h.wg.Open(ifName("g", renamed.Deployment), wg.Options{}); err != nil {
		t.Fatal(err)
	}
	h.fails(renamed, "already open")
	if h.wg.Device("zl-prod-g") == nil {
		t.Fatal("the failed setup closed the live device")
	}
	if got := h.e.natBind(); got != live {
		t.Fatalf("after a failed setup_global_overlay the NAT bind is %p, not the live device's %p", got, live)
	}
}

// A candidate trial through our TURN relay marks the address it tries on
// the bind as relayed: the next endpoint WireGuard is given for it goes
// through the relay. That route belongs to the trial. A peer removed by
// remove_peer and added again at the address (the node re-added), or an
// add_peer that names the address as the peer's endpoint, must have that
// endpoint tried directly first, as every requested endpoint is, not be
// put on the relay by a trial of a record the main daemon replaced.
func TestRequestedEndpointIsNotRoutedByAnEarlierTrial(t *testing.T) {
	setup := func(t *testing.T) *harness {
		server := startTURNServer(t)
		h := newHarnessOn(t, wg.KindUserspace, func(c *Config) { c.NAT = &NATConfig{RefreshInterval: -1} })
		req := globalReq("10.200.3.0/24")
		req.NATEnabled = true
		req.TURNServers = []protocol.TURNServerConfig{{Address: server, Username: testTURNUser, Credential: testTURNSecret}}
		h.ok(req)
		waitRelay(t, h, "")
		return h
	}
	relayed := func(t *testing.T, h *harness, addr string) bool {
		ep, err := h.e.natBind().ParseEndpoint(addr)
		if err != nil {
			t.Fatal(err)
		}
		_, direct := ep.(*conn.StdNetEndpoint)
		return !direct
	}
	// trials runs monitor rounds 7 s apart (a trial lasts 6 s): the peer
	// never handshakes, so each round moves it to its next trial.
	trials := func(h *harness, rounds int) {
		now := time.Now()
		for i := range rounds {
			h.e.checkPeers(now.Add(time.Duration(i) * 7 * time.Second))
		}
	}
	pk := newKey(t)
	const endpoint, candidate = "192.0.2.10:51820", "198.51.100.7:40123"
	spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: endpoint, AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}

	t.Run("remove_peer", func(t *testing.T) {
		h := setup(t)
		add := protocol.AddPeer{PeerSpec: spec}
		h.ok(add)
		trials(h, 2) // the endpoint directly, then through the relay
		if !relayed(t, h, endpoint) {
			t.Fatal("the candidate trial did not put the peer on the relay")
		}
		h.ok(protocol.RemovePeer{Pubkey: pk.String()})
		h.ok(add)
		if relayed(t, h, endpoint) {
			t.Fatalf("add_peer gave endpoint %s, and WireGuard would reach it through the relay: a route left by the trial of a removed peer", endpoint)
		}
	})
	t.Run("add_peer", func(t *testing.T) {
		h := setup(t)
		h.ok(protocol.AddPeer{PeerSpec: spec, Candidates: []string{candidate}})
		trials(h, 4) // both directly, then both through the relay
		if !relayed(t, h, candidate) {
			t.Fatal("the candidate trials did not put the candidate on the relay")
		}
		moved := spec
		moved.Endpoint = candidate
		h.ok(protocol.AddPeer{PeerSpec: moved})
		if ep := h.wg.Device("zl-prod-g").Peer(pk).Endpoint.String(); ep != candidate {
			t.Fatalf("add_peer set endpoint %s; the device has %s", candidate, ep)
		}
		if relayed(t, h, candidate) {
			t.Fatalf("add_peer set endpoint %s, and WireGuard would reach it through the relay, as the replaced record's trial left it", candidate)
		}
	})
}

// recordingFirewall keeps the table it was last given, as nftables would.
type recordingFirewall struct {
	mu   sync.Mutex
	last *firewall.Spec
}

func (f *recordingFirewall) Apply(s firewall.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = &s
	return nil
}

func (f *recordingFirewall) Delete(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = nil
	return nil
}

func (f *recordingFirewall) Drifted(s firewall.Spec) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last == nil || !reflect.DeepEqual(*f.last, s), nil
}

func (f *recordingFirewall) Inspect(string) (firewall.State, error) { return firewall.State{}, nil }

func (f *recordingFirewall) dns() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last == nil {
		return nil
	}
	return slices.Clone(f.last.DNS)
}

// A DNS listener whose port was taken is bound by a later reconcile pass.
// Our table's input rule keeps DNS listeners to the overlay, and lists
// them: the pass that binds the listener must leave it in the table, not
// leave it open to the underlay until the pass after it. The pass checked
// the table against the listeners first and bound the listener after.
func TestReconcileFirewallCoversTheDNSListenerItBinds(t *testing.T) {
	taken, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	listener := netip.MustParseAddrPort(taken.LocalAddr().String())
	srv, err := dns.New(dns.Config{Zone: "zlayer.local"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	fw := &recordingFirewall{}
	h := newHarnessWith(t, func(c *Config) {
		c.DNS = &DNSConfig{Server: srv, LoopbackPort: listener.Port(), OverlayPort: 53, MainPort: 15353, NodeListeners: NodeListenersOff}
		c.Firewall = &FirewallConfig{Firewall: fw}
	})
	h.ok(globalReq("10.200.3.0/24"))
	if slices.Contains(srv.Listeners(), listener) {
		t.Fatalf("%s was bound though its port is taken", listener)
	}
	taken.Close()
	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(srv.Listeners(), listener) {
		t.Fatalf("the reconcile pass did not bind %s once its port was free: %v", listener, srv.Listeners())
	}
	if got := fw.dns(); !slices.Contains(got, listener) {
		t.Fatalf("the reconcile pass bound DNS listener %s, and our table's DNS listeners are %v", listener, got)
	}
}

// Without a WireGuard backend (Config.WG nil, as pure-logic embedders run
// the engine) a setup_global_overlay fails with a clear err, turn_servers
// or not: checking whether the backend can carry a relay must not
// dereference the missing backend.
func TestTURNServersWithoutAWireGuardBackend(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.WG = nil; c.NAT = &NATConfig{} })
	req := globalReq("10.200.3.0/24")
	req.NATEnabled = true
	req.TURNServers = []protocol.TURNServerConfig{{Address: "192.0.2.1:3478", Username: testTURNUser, Credential: testTURNSecret}}
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("setup_global_overlay with turn_servers and no WireGuard backend panicked: %v", p)
			}
		}()
		h.fails(req, "no WireGuard backend")
	}()
}

// A global peer on a relayed address it no longer lists is judged stale
// and tried again, candidate by candidate, until it handshakes anew. The
// verdict is about the endpoint the device had when the monitor read it:
// an add_peer that moves the peer to a new endpoint between that read and
// the verdict, answered ok, must not have its endpoint put through trials
// by a verdict on the endpoint it replaced while the peer is healthy there
// (WireGuard keeps its session across an endpoint change, so no handshake
// comes to end the verdict for up to two minutes).
func TestStaleVerdictDoesNotOutliveTheEndpointItJudged(t *testing.T) {
	server := startTURNServer(t)
	h := newHarnessOn(t, wg.KindUserspace, func(c *Config) { c.NAT = &NATConfig{RefreshInterval: -1} })
	req := globalReq("10.200.3.0/24")
	req.NATEnabled = true
	req.TURNServers = []protocol.TURNServerConfig{{Address: server, Username: testTURNUser, Credential: testTURNSecret}}
	h.ok(req)
	waitRelay(t, h, "")
	pk := newKey(t)
	// The peer's relayed address (on the TURN server's IP, loopback here).
	const relayedAddr, moved = "127.0.0.1:40000", "192.0.2.20:51820"
	spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: relayedAddr, AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}
	h.ok(protocol.AddPeer{PeerSpec: spec})
	now := time.Now()
	h.wg.Device("zl-prod-g").Handshake(pk, now, relayedAddr)
	spec.Endpoint = moved
	var resp protocol.Response
	wait := during(t, h.e, "monitor.read", func() { resp = h.do(protocol.AddPeer{PeerSpec: spec}) })
	h.e.checkPeers(now)
	wait()
	if _, ok := resp.(protocol.OK); !ok {
		t.Fatalf("add_peer: %+v", resp)
	}
	// The peer stays healthy on the new endpoint (the session goes on):
	// no round may put it through trials.
	for i := 1; i <= 3; i++ {
		h.e.checkPeers(now.Add(time.Duration(i) * 7 * time.Second))
		ep, err := h.e.natBind().ParseEndpoint(moved)
		if err != nil {
			t.Fatal(err)
		}
		if _, direct := ep.(*conn.StdNetEndpoint); !direct {
			t.Fatalf("round %d: the peer is healthy on %s, the endpoint add_peer set; trials forced by a verdict on %s moved it onto the relay", i, moved, relayedAddr)
		}
		if got := h.wg.Device("zl-prod-g").Peer(pk).Endpoint.String(); got != moved {
			t.Fatalf("round %d: the device has %s; add_peer set %s", i, got, moved)
		}
	}
}
