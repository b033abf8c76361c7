package engine

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v4"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

const (
	testTURNUser   = "node-7"
	testTURNSecret = "turn-secret-4f1c9e"
)

// startTURNServer runs pion's TURN server on loopback with one user.
func startTURNServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "zlayer.test",
		AuthHandler: func(username, realm string, _ net.Addr) ([]byte, bool) {
			return turn.GenerateAuthKey(username, realm, testTURNSecret), username == testTURNUser
		},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn:            pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{RelayAddress: net.ParseIP("127.0.0.1"), Address: "127.0.0.1"},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return pc.LocalAddr().String()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// turn_servers on setup_global_overlay: the node allocates a relay and
// reports its relayed address in status and as a nat_endpoint_changed for
// its own key; the credential is kept in the store (so a restart allocates
// again without the main daemon) and appears nowhere else: not in status,
// not in the log, not in an err.
func TestTURNServersOfTheRequestAllocateAndStaySecret(t *testing.T) {
	server := startTURNServer(t)
	logs := &syncBuffer{}
	h := newHarnessOn(t, wg.KindUserspace, func(c *Config) {
		c.NAT = &NATConfig{}
		c.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	req := protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.3.0/24", WGPort: 51820, NATEnabled: true,
		TURNServers: []protocol.TURNServerConfig{{Address: server, Username: testTURNUser, Credential: testTURNSecret}}}

	// Bad entries are refused without quoting the credential.
	bad := req
	bad.TURNServers = []protocol.TURNServerConfig{{Address: "198.51.100.1:0", Username: testTURNUser, Credential: testTURNSecret}}
	if msg := h.fails(bad, "turn_servers[0]"); strings.Contains(msg, testTURNSecret) {
		t.Fatalf("err quotes the credential: %s", msg)
	}
	bad.TURNServers = []protocol.TURNServerConfig{{Address: server, Username: testTURNUser}}
	h.fails(bad, "turn_servers[0]", "credential")

	h.ok(req)
	relayed := waitRelay(t, h, "")
	var own string
	own = h.status().PublicKey
	waitEvent(t, h, func(ev protocol.Event) bool {
		e, ok := ev.(protocol.NATEndpointChanged)
		return ok && e.Pubkey == own && e.Endpoint == relayed && e.Candidate == "relay"
	})
	st := h.status()
	if st.NAT == nil || !st.NAT.Enabled || len(st.NAT.TURNServers) != 1 || st.NAT.TURNServers[0].Address != server ||
		st.NAT.TURNServers[0].State != "allocated" || st.NAT.TURNServers[0].Relayed != relayed {
		t.Fatalf("status nat %+v", st.NAT)
	}
	b, _ := json.Marshal(st)
	if strings.Contains(string(b), testTURNSecret) || strings.Contains(string(b), testTURNUser) {
		t.Fatalf("status carries the credentials: %s", b)
	}
	raw, err := os.ReadFile(filepath.Join(h.dir, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(testTURNSecret)) {
		t.Fatal("the credential is not in the store: a restart could not allocate again")
	}
	if fi, _ := os.Stat(filepath.Join(h.dir, store.FileName)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("store mode %v", fi.Mode().Perm())
	}

	// A restart allocates again from the store.
	h.e.Close() // the NAT loop runs until Close; crash() waits for it
	for _, d := range h.wg.Devices() {
		d.Close()
	}
	h.e = nil
	h.st.Close()
	h.st = nil
	h.start()
	waitRelay(t, h, "")

	// The same setup without turn_servers and no flags: no relay.
	plain := req
	plain.TURNServers = nil
	h.ok(plain)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := h.status()
		if st.NAT != nil && len(st.NAT.RelayAddrs) == 0 && len(st.NAT.TURNServers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay still running without TURN servers: %+v", st.NAT)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.stop()
	if strings.Contains(logs.String(), testTURNSecret) {
		t.Fatal("the log contains the TURN credential")
	}
	if !strings.Contains(logs.String(), "TURN relay allocated") {
		t.Fatal("the allocation was not logged")
	}
}

// waitRelay waits for status to report a relayed address other than not.
func waitRelay(t *testing.T, h *harness, not string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := h.status()
		if st.NAT != nil && len(st.NAT.RelayAddrs) == 1 && st.NAT.RelayAddrs[0] != not {
			return st.NAT.RelayAddrs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no relayed address in status: %+v", st.NAT)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitEvent(t *testing.T, h *harness, match func(protocol.Event) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.mu.Lock()
		for _, ev := range h.events {
			if match(ev) {
				h.mu.Unlock()
				return
			}
		}
		evs := append([]protocol.Event(nil), h.events...)
		h.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no such event among %+v", evs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The candidate trials of a global peer: every candidate directly, then,
// with an allocation, through the relay, relayed addresses first.
func TestNATTrialsGoDirectThenThroughTheRelay(t *testing.T) {
	e := &Engine{}
	cands := []string{"198.51.100.7:40000", "203.0.113.5:52114", "node-b.example:51820"}
	v := relayView{allocated: true, ips: []netip.Addr{netip.MustParseAddr("203.0.113.5")}}
	got := e.natTrials(scopeGlobal, cands, v)
	want := []natTrial{
		{"198.51.100.7:40000", false}, {"203.0.113.5:52114", false}, {"node-b.example:51820", false},
		{"203.0.113.5:52114", true}, {"198.51.100.7:40000", true}, {"node-b.example:51820", true},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("trials %v, want %v", got, want)
	}
	v.allocated = false
	if got := e.natTrials(scopeGlobal, cands, v); len(got) != 3 {
		t.Fatalf("without an allocation: %v", got)
	}
	v.allocated = true
	if got := e.natTrials(scopeService("web"), cands, v); len(got) != 3 {
		t.Fatalf("a dedicated device's peer has no relay: %v", got)
	}
	if d := v.direct(cands); len(d) != 1 || d[0].String() != "198.51.100.7:40000" {
		t.Fatalf("direct addresses %v", d)
	}
}

// Kernel WireGuard keeps the port's UDP socket to itself, so a relay could
// never run on it: turn_servers are refused, whether the device is new or
// already up (where it would otherwise be kept and the relay silently never
// run), and nothing of the request is kept.
func TestTURNServersOnKernelWireGuardAreRefused(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.NAT = &NATConfig{} })
	req := protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.3.0/24", WGPort: 51820, NATEnabled: true,
		TURNServers: []protocol.TURNServerConfig{{Address: "192.0.2.1:3478", Username: testTURNUser, Credential: testTURNSecret}}}
	h.fails(req, "turn_servers", "--wireguard userspace")
	if d := h.wg.Devices(); len(d) != 0 {
		t.Fatalf("a refused setup opened %d devices", len(d))
	}

	plain := req
	plain.TURNServers = nil
	h.ok(plain)
	h.fails(req, "turn_servers", "--wireguard userspace")
	if st := h.status(); st.NAT != nil && len(st.NAT.TURNServers) > 0 {
		t.Fatalf("the refused turn_servers are in status: %+v", st.NAT)
	}
	raw, err := os.ReadFile(filepath.Join(h.dir, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(testTURNSecret)) {
		t.Fatal("the refused credential was stored")
	}
}
