package engine

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Running beside the real ZLayer main daemon (issue 23): its node key, its
// DNS server's addresses, its DNS settings for containers and guests.

// writeNodeConfig writes a node_config.json the way `zlayer node init`
// shapes it, with the given mode, and returns the private key in it.
func writeNodeConfig(t *testing.T, dir string, mode os.FileMode) wgtypes.Key {
	t.Helper()
	k, err := wg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.MarshalIndent(map[string]any{
		"node_id": "6c1f0a52-8c8e-4a8e-9d36-1f1e1c0c4f11", "raft_node_id": 1, "advertise_addr": "192.0.2.10",
		"api_port": 3669, "raft_port": 9000, "overlay_port": 51420, "overlay_cidr": "10.200.0.0/16",
		"wireguard_private_key": k.String(), "wireguard_public_key": k.PublicKey().String(),
		"is_leader": true, "created_at": "2026-12-01T10:00:00Z",
	}, "", "  ")
	path := filepath.Join(dir, NodeConfigFile)
	if err := os.WriteFile(path, doc, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return k
}

func hasWarning(s protocol.StatusSnapshot, parts ...string) bool {
	return slices.ContainsFunc(s.Warnings, func(w string) bool {
		for _, p := range parts {
			if !strings.Contains(w, p) {
				return false
			}
		}
		return true
	})
}

func TestGlobalDeviceUsesTheNodeConfigKey(t *testing.T) {
	h := newHarness(t)
	k := writeNodeConfig(t, h.dir, 0o600)
	h.ok(protocol.SetLocalWGPubkey{Pubkey: k.PublicKey().String()}) // what the agent sends first
	h.ok(globalReq("10.200.3.0/24"))
	s := h.status()
	if s.PublicKey != k.PublicKey().String() || s.KeySource != keyFromNodeConfig || s.PubkeyMismatch {
		t.Fatalf("status public_key %s (source %q, mismatch %t), want node_config's %s", s.PublicKey, s.KeySource, s.PubkeyMismatch, k.PublicKey())
	}
	if got := h.wg.Device("zl-prod-g").PublicKey(); got != k.PublicKey() {
		t.Fatalf("the device has key %s, not node_config's", got)
	}
	h.crash()
	if got := h.wg.Device("zl-prod-g").PublicKey(); got != k.PublicKey() || h.status().KeySource != keyFromNodeConfig {
		t.Fatalf("after a restart the device has key %s", got)
	}
}

func TestRequestKeyWinsOverNodeConfig(t *testing.T) {
	h := newHarness(t)
	writeNodeConfig(t, h.dir, 0o600)
	k, _ := wg.GenerateKey()
	req := globalReq("10.200.3.0/24")
	req.PrivateKey = k.String()
	h.ok(req)
	if s := h.status(); s.PublicKey != k.PublicKey().String() || s.KeySource != keyFromRequest {
		t.Fatalf("public key %s from %q, want the request's %s", s.PublicKey, s.KeySource, k.PublicKey())
	}
}

func TestNodeConfigOthersCanReadIsRefused(t *testing.T) {
	h := newHarness(t)
	k := writeNodeConfig(t, h.dir, 0o644)
	h.ok(globalReq("10.200.3.0/24"))
	s := h.status()
	if s.PublicKey == k.PublicKey().String() {
		t.Fatal("the key of a world-readable node_config.json was used")
	}
	if !hasWarning(s, NodeConfigFile, "0644", "chmod 600") {
		t.Fatalf("status must say why the file was refused and how to fix it: %q", s.Warnings)
	}
	// Fixed, the next setup (every main daemon start sends one) adopts it.
	os.Chmod(filepath.Join(h.dir, NodeConfigFile), 0o600)
	h.ok(globalReq("10.200.3.0/24"))
	if s := h.status(); s.PublicKey != k.PublicKey().String() || hasWarning(s, NodeConfigFile) {
		t.Fatalf("after chmod 600: key %s, warnings %q", s.PublicKey, s.Warnings)
	}
}

func TestNodeConfigOfAnotherKeyThanTheMainDaemonsIsNotAdopted(t *testing.T) {
	h := newHarness(t)
	k := writeNodeConfig(t, h.dir, 0o600)
	other := newKey(t).String()
	h.ok(protocol.SetLocalWGPubkey{Pubkey: other})
	h.ok(globalReq("10.200.3.0/24"))
	s := h.status()
	if s.PublicKey == k.PublicKey().String() || !hasWarning(s, NodeConfigFile, other) || !s.PubkeyMismatch {
		t.Fatalf("key %s, warnings %q: a node_config key the main daemon does not name must be reported, not used", s.PublicKey, s.Warnings)
	}
}

func TestNodeConfigInconsistentKeysAreRefused(t *testing.T) {
	h := newHarness(t)
	path := filepath.Join(h.dir, NodeConfigFile)
	k, _ := wg.GenerateKey()
	doc := `{"wireguard_private_key":"` + k.String() + `","wireguard_public_key":"` + newKey(t).String() + `"}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	h.ok(globalReq("10.200.3.0/24"))
	if s := h.status(); s.PublicKey == k.PublicKey().String() || !hasWarning(s, "not the public key") {
		t.Fatalf("key %s, warnings %q", s.PublicKey, s.Warnings)
	}
	if s := h.status(); strings.Contains(strings.Join(s.Warnings, " "), k.String()[:20]) {
		t.Fatal("a warning quotes the private key")
	}
}

// ZLayer sends setup_global_overlay before it has read node_config.json
// (set_local_wg_pubkey comes from serve, later): the device first runs on
// our own key, and moves to the cluster's key when the main daemon names it.
func TestRunningDeviceMovesToTheNodeConfigKeyWhenTheMainDaemonNamesIt(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	before := h.status()
	if before.KeySource != keyFromGenerated {
		t.Fatalf("key source %q", before.KeySource)
	}
	peer := newKey(t)
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: peer.String(), Endpoint: "192.0.2.2:51820", AllowedIPs: "10.200.9.0/24"}})
	k := writeNodeConfig(t, h.dir, 0o600)
	h.ok(protocol.SetLocalWGPubkey{Pubkey: k.PublicKey().String()})
	s := h.status()
	dev := h.wg.Device("zl-prod-g")
	if s.PublicKey != k.PublicKey().String() || dev.PublicKey() != k.PublicKey() || s.PubkeyMismatch || s.KeySource != keyFromNodeConfig {
		t.Fatalf("after set_local_wg_pubkey: status %s (%q), device %s, want %s", s.PublicKey, s.KeySource, dev.PublicKey(), k.PublicKey())
	}
	if dev.Peer(peer) == nil || s.NodeIP != before.NodeIP {
		t.Fatal("switching the key lost a peer or the address")
	}
	h.crash()
	if got := h.status(); got.PublicKey != k.PublicKey().String() {
		t.Fatalf("the switched key did not survive a restart: %s", got.PublicKey)
	}
}

// The reference answers ok to any pubkey string (its own integration test
// sends "k"); we record it and report the mismatch.
func TestExpectedPubkeyAcceptsAnyString(t *testing.T) {
	h := newHarness(t)
	h.ok(protocol.SetLocalWGPubkey{Pubkey: "k"})
	h.ok(globalReq("10.200.3.0/24"))
	s := h.status()
	if s.ExpectedPubkey != "k" || !s.PubkeyMismatch || len(s.Warnings) == 0 {
		t.Fatalf("status %+v", s)
	}
	h.crash()
	if s := h.status(); s.ExpectedPubkey != "k" {
		t.Fatalf("expected key after restart: %q", s.ExpectedPubkey)
	}
}

// newDNSHarness is a harness with the embedded DNS server on (listeners
// that cannot bind on this host are only reported, which is all the plan
// tests need).
func newDNSHarness(t *testing.T, nodeListeners string) *harness {
	srv, err := dns.New(dns.Config{Zone: "zlayer.local"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return newHarnessWith(t, func(c *Config) {
		c.DNS = &DNSConfig{Server: srv, LoopbackPort: 0, OverlayPort: 53, MainPort: 15353, NodeListeners: nodeListeners}
	})
}

func TestDNSLeavesTheMainDaemonsAddressesAlone(t *testing.T) {
	h := newDNSHarness(t, NodeListenersAuto)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	nodeIP := netip.MustParseAddr("10.200.3.1")
	mainDaemons := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:15353"), netip.AddrPortFrom(nodeIP, 15353), netip.AddrPortFrom(nodeIP, 53),
	}
	plan := h.e.planDNS()
	for _, a := range mainDaemons {
		if slices.Contains(plan.listen, a) {
			t.Fatalf("we listen on %s, which the main daemon's DNS server binds: %v", a, plan.listen)
		}
	}
	gw := h.status().Services[0].Gateway
	if !slices.Contains(plan.listen, netip.AddrPortFrom(gw, 53)) {
		t.Fatalf("the bridge gateway %s:53 is not served: %v", gw, plan.listen)
	}
	if s := h.status(); s.DNS == nil || s.DNS.Delegated {
		t.Fatalf("dns status %+v", s.DNS)
	}
	// A main daemon that registers names relies on us: then we serve its
	// addresses too, and keep doing so after a restart.
	h.ok(protocol.RegisterDNS{Name: "db", IP: netip.MustParseAddr("10.200.3.7")})
	for range 2 {
		plan = h.e.planDNS()
		for _, a := range mainDaemons {
			if !slices.Contains(plan.listen, a) {
				t.Fatalf("after register_dns %s is not served: %v", a, plan.listen)
			}
		}
		if s := h.status(); !s.DNS.Delegated {
			t.Fatal("status does not say the DNS is delegated to us")
		}
		h.crash()
	}
}

func TestDNSDelegatedByHelloFeature(t *testing.T) {
	h := newDNSHarness(t, NodeListenersAuto)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.Hello{ClientVersion: "zlayer 0.12.2"})
	if slices.Contains(h.e.planDNS().listen, netip.MustParseAddrPort("10.200.3.1:53")) {
		t.Fatal("a hello without the dns feature delegated DNS")
	}
	h.ok(protocol.Hello{Features: []string{protocol.FeatureDNS}})
	if !slices.Contains(h.e.planDNS().listen, netip.MustParseAddrPort("10.200.3.1:53")) {
		t.Fatal("hello with the dns feature did not delegate DNS")
	}
}

func TestDNSNodeListenersOnAndOff(t *testing.T) {
	on := newDNSHarness(t, NodeListenersOn)
	on.ok(globalReq("10.200.3.0/24"))
	if !slices.Contains(on.e.planDNS().listen, netip.MustParseAddrPort("10.200.3.1:53")) {
		t.Fatal("on: the node IP is not served")
	}
	off := newDNSHarness(t, NodeListenersOff)
	off.ok(globalReq("10.200.3.0/24"))
	off.ok(protocol.RegisterDNS{Name: "db", IP: netip.MustParseAddr("10.200.3.7")})
	if slices.Contains(off.e.planDNS().listen, netip.MustParseAddrPort("10.200.3.1:53")) {
		t.Fatal("off: register_dns made us serve the node IP")
	}
}

// The main daemon's dns_server/dns_domain on an attach are what the answer
// carries: its guests relay to port 15353 of that address, which only it
// serves, and its containers' resolv.conf names it.
func TestAttachPassesTheMainDaemonsDNSThrough(t *testing.T) {
	h := newDNSHarness(t, NodeListenersAuto)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	nodeIP := netip.MustParseAddr("10.200.3.1")

	guest := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm1"), Service: "web", JoinGlobal: true,
		DNSServer: nodeIP, DNSDomain: "prod.local"}).(protocol.GuestConfig)
	if guest.DNSServer != nodeIP || guest.DNSDomain != "prod.local" {
		t.Fatalf("guest_config dns %s %q, want the main daemon's %s prod.local", guest.DNSServer, guest.DNSDomain, nodeIP)
	}
	h.procs.Add(4242)
	att := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(4242), Service: "web", JoinGlobal: true,
		DNSServer: nodeIP, DNSDomain: "prod.local"}).(protocol.Attached)
	if att.DNSServer != nodeIP || att.DNSDomain != "prod.local" {
		t.Fatalf("attached dns %s %q", att.DNSServer, att.DNSDomain)
	}
	// Without the main daemon's settings, a container gets our resolver on
	// its bridge gateway; a guest gets none (nothing of ours serves the
	// port it relays to), and the zone either way.
	h.procs.Add(4243)
	att = h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(4243), Service: "web"}).(protocol.Attached)
	if gw := h.status().Services[0].Gateway; att.DNSServer != gw || att.DNSDomain == "" {
		t.Fatalf("attached dns %s %q, want our gateway %s", att.DNSServer, att.DNSDomain, gw)
	}
	guest = h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm2"), Service: "web"}).(protocol.GuestConfig)
	if guest.DNSServer.IsValid() {
		t.Fatalf("guest got dns_server %s, which serves nothing on its relay port", guest.DNSServer)
	}
}
