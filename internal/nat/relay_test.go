package nat

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"golang.zx2c4.com/wireguard/conn"
)

const (
	testTURNUser = "overlay"
	testTURNPass = "s3cret-turn-credential"
)

// turnServer is pion's TURN server on loopback, as an independent
// implementation of RFC 8656 to test our client against (the e2e suite
// uses coturn).
type turnServer struct {
	t    *testing.T
	addr string
	srv  *turn.Server
}

func startTURN(t *testing.T, addr string) *turnServer {
	t.Helper()
	return startTURNWith(t, addr, nil, nil)
}

// startTURNWith is startTURN with a filter of peer addresses (nil: every
// address is permitted) and a wrapper of the server's socket (nil: none).
func startTURNWith(t *testing.T, addr string, permit turn.PermissionHandler, wrap func(net.PacketConn) net.PacketConn) *turnServer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		pc = wrap(pc)
	}
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "zlayer.test",
		AuthHandler: func(username, realm string, _ net.Addr) ([]byte, bool) {
			if username != testTURNUser {
				return nil, false
			}
			return turn.GenerateAuthKey(username, realm, testTURNPass), true
		},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn:            pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{RelayAddress: net.ParseIP("127.0.0.1"), Address: "127.0.0.1"},
			PermissionHandler:     permit,
		}},
	})
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	s := &turnServer{t: t, addr: pc.LocalAddr().String(), srv: srv}
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *turnServer) server() TURNServer {
	return TURNServer{Address: s.addr, Username: testTURNUser, Credential: testTURNPass}
}

// received collects what a relay delivers.
type received struct {
	mu   sync.Mutex
	got  []datagram
	cond chan struct{}
}

func newReceived() *received { return &received{cond: make(chan struct{}, 1)} }

func (r *received) deliver(p []byte, from netip.AddrPort) {
	r.mu.Lock()
	r.got = append(r.got, datagram{from: from, data: append([]byte(nil), p...)})
	r.mu.Unlock()
	select {
	case r.cond <- struct{}{}:
	default:
	}
}

func (r *received) find(p []byte) (datagram, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.got {
		if bytes.Equal(d.data, p) {
			return d, true
		}
	}
	return datagram{}, false
}

func newTestRelay(t *testing.T, cfg RelayConfig, rcv *received) *Relay {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rcv != nil {
		r.deliver = rcv.deliver
	}
	r.Start()
	t.Cleanup(r.Close)
	return r
}

// testWriter sends log lines to the test's log until the test's cleanups
// have run. pion's client goroutines outlive Relay.Close (it does not wait
// for them) and may still log a line; t.Log after the test has finished
// is a data race with the testing package's own bookkeeping (the race
// detector caught it in CI).
type testWriter struct {
	t    *testing.T
	mu   *sync.Mutex
	done *bool
}

// newTestWriter must be called before anything that logs through it
// registers its own cleanup, so that its cleanup runs after theirs.
func newTestWriter(t *testing.T) testWriter {
	w := testWriter{t: t, mu: new(sync.Mutex), done: new(bool)}
	t.Cleanup(func() {
		w.mu.Lock()
		*w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !*w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sendUntil sends p from r to dst until rcv has it (the first packets to a
// new address wait for their permission; a permission the receiver has
// not installed yet drops them).
func sendUntil(t *testing.T, r *Relay, p []byte, dst netip.AddrPort, rcv *received) datagram {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := r.send(p, dst); err != nil && !errors.Is(err, errNoAllocation) {
			t.Fatal(err)
		}
		if d, ok := rcv.find(p); ok {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("a packet sent to %s through the relay never arrived", dst)
		}
		select {
		case <-rcv.cond:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestRelayCarriesPacketsBetweenTwoAllocations(t *testing.T) {
	srv := startTURN(t, "")
	rcv1, rcv2 := newReceived(), newReceived()
	r1 := newTestRelay(t, RelayConfig{Servers: []TURNServer{srv.server()}}, rcv1)
	r2 := newTestRelay(t, RelayConfig{Servers: []TURNServer{srv.server()}}, rcv2)
	waitFor(t, 10*time.Second, "both allocations", func() bool { return r1.Relayed().IsValid() && r2.Relayed().IsValid() })
	a1, a2 := r1.Relayed(), r2.Relayed()
	if a1 == a2 || a1.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("relayed addresses %s and %s", a1, a2)
	}
	st := r1.Status()
	if st.Server != srv.addr || st.Relayed != a1 || len(st.Servers) != 1 || st.Servers[0].State != TURNAllocated {
		t.Fatalf("status %+v", st)
	}
	// Each lets the other's relayed address in (permissions are per IP).
	r1.Permit([]netip.Addr{a2.Addr()})
	r2.Permit([]netip.Addr{a1.Addr()})

	p := wireGuardPacket(1, 148, [4]byte{1, 2, 3, 4})
	if d := sendUntil(t, r1, p, a2, rcv2); d.from != a1 {
		t.Fatalf("relayed packet arrived from %s, want r1's relayed address %s", d.from, a1)
	}
	q := wireGuardPacket(2, 92, [4]byte{5, 6, 7, 8})
	if d := sendUntil(t, r2, q, a1, rcv1); d.from != a2 {
		t.Fatalf("reply arrived from %s, want %s", d.from, a2)
	}
	// Once the permission exists, writes take the fast path: a burst
	// larger than the queue of first packets (64) gets through, most of
	// it. Sent in groups with a pause between them: in one tight loop,
	// an emulated guest's TURN server fell so far behind that loopback
	// socket buffers dropped more than half of it.
	for i := range 200 {
		r1.send(wireGuardPacket(4, 200, [4]byte{9, byte(i), byte(i >> 8), 0}), a2)
		if i%20 == 19 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(t, 10*time.Second, "the burst", func() bool {
		rcv2.mu.Lock()
		defer rcv2.mu.Unlock()
		return len(rcv2.got) >= 1+100
	})
}

func TestRelayAllocatesAgainAfterTheServerRestarts(t *testing.T) {
	srv := startTURN(t, "")
	var changes atomic.Int32
	rcv := newReceived()
	r := newTestRelay(t, RelayConfig{Servers: []TURNServer{srv.server()}, CheckInterval: 100 * time.Millisecond, Timeout: time.Second,
		OnChange: func() { changes.Add(1) }}, rcv)
	waitFor(t, 10*time.Second, "allocation", func() bool { return r.Relayed().IsValid() })
	first := r.Relayed()

	// The server restarts on the same address: every allocation is gone.
	srv.srv.Close()
	srv2 := startTURN(t, srv.addr)
	waitFor(t, 15*time.Second, "a new allocation", func() bool {
		a := r.Relayed()
		return a.IsValid() && changes.Load() >= 3 // allocated, lost, allocated
	})
	st := r.Status()
	if st.Servers[0].State != TURNAllocated {
		t.Fatalf("status after the restart: %+v", st)
	}
	t.Logf("relayed %s before the restart, %s after", first, r.Relayed())

	// The new allocation carries traffic.
	prcv := newReceived()
	peer := newTestRelay(t, RelayConfig{Servers: []TURNServer{srv2.server()}}, prcv)
	waitFor(t, 10*time.Second, "peer allocation", func() bool { return peer.Relayed().IsValid() })
	r.Permit([]netip.Addr{peer.Relayed().Addr()})
	peer.Permit([]netip.Addr{r.Relayed().Addr()})
	sendUntil(t, r, wireGuardPacket(1, 148, [4]byte{7}), peer.Relayed(), prcv)
}

// deadServer reads Allocate requests and never answers; it counts the
// distinct transactions (pion retransmits each).
func deadServer(t *testing.T) (string, func() int) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var mu sync.Mutex
	seen := map[string]bool{}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() == nil && m.Type.Method == stun.MethodAllocate {
				mu.Lock()
				seen[base64.StdEncoding.EncodeToString(m.TransactionID[:])] = true
				mu.Unlock()
			}
		}
	}()
	return pc.LocalAddr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
}

func TestRelayBacksOffFromADeadServerAndFallsBackToTheNext(t *testing.T) {
	dead, attempts := deadServer(t)
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	start := time.Now()
	r := newTestRelay(t, RelayConfig{
		Servers: []TURNServer{{Address: dead, Username: testTURNUser, Credential: testTURNPass}},
		Timeout: 200 * time.Millisecond, MinBackoff: 200 * time.Millisecond, MaxBackoff: 10 * time.Second, Log: log,
	}, nil)
	waitFor(t, 20*time.Second, "four failed attempts", func() bool { return r.Status().Servers[0].Failures >= 4 })
	elapsed := time.Since(start)
	st := r.Status().Servers[0]
	if st.State != TURNFailed || !strings.Contains(st.LastError, "no answer") || !st.RetryAt.After(time.Now()) {
		t.Fatalf("dead server status %+v", st)
	}
	// Four attempts wait 0.2 + 0.4 + 0.8 s of backoff between them (and
	// 0.2 s of timeout each): a hot loop would be far faster.
	if elapsed < 1400*time.Millisecond {
		t.Fatalf("four attempts within %v: no backoff", elapsed)
	}
	if n := attempts(); n < 4 || n > st.Failures+1 {
		t.Fatalf("the server saw %d allocate transactions for %d failures", n, st.Failures)
	}
	r.Close()

	// With a live server behind the dead one, the relay ends up there.
	srv := startTURN(t, "")
	r2 := newTestRelay(t, RelayConfig{
		Servers: []TURNServer{{Address: dead, Username: testTURNUser, Credential: testTURNPass}, srv.server()},
		Timeout: 200 * time.Millisecond,
	}, nil)
	waitFor(t, 10*time.Second, "fallback allocation", func() bool { return r2.Relayed().IsValid() })
	st2 := r2.Status()
	if st2.Server != srv.addr || st2.Servers[0].State != TURNFailed || st2.Servers[1].State != TURNAllocated {
		t.Fatalf("status %+v", st2)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), testTURNPass) {
		t.Fatal("the log contains the TURN credential")
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// refusingServer answers every Allocate with 401 and a fresh nonce, as
// coturn does for credentials it does not accept (pion's server says 400).
func refusingServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() != nil || m.Type != stun.NewType(stun.MethodAllocate, stun.ClassRequest) {
				continue
			}
			res, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse),
				stun.CodeUnauthorized, stun.NewRealm("zlayer.test"), stun.NewNonce(time.Now().String()), stun.Fingerprint)
			if err == nil {
				pc.WriteTo(res.Raw, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

func TestRelayWrongCredentialsAreReportedWithoutTheCredential(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bad := TURNServer{Address: refusingServer(t), Username: testTURNUser, Credential: testTURNPass}
	r := newTestRelay(t, RelayConfig{Servers: []TURNServer{bad}, Log: log}, nil)
	waitFor(t, 10*time.Second, "a failed attempt", func() bool { return r.Status().Servers[0].Failures >= 1 })
	st := r.Status().Servers[0]
	if !strings.Contains(st.LastError, "401") || !strings.Contains(st.LastError, "credentials") {
		t.Fatalf("last error %q does not say the credentials were refused", st.LastError)
	}
	r.Close()
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), testTURNPass) || strings.Contains(st.LastError, testTURNPass) {
		t.Fatal("the credential leaked into the log or the status")
	}
	if s := bad.String() + bad.GoString() + fmt.Sprintf("%v %+v", bad, []TURNServer{bad}); strings.Contains(s, testTURNPass) || strings.Contains(s, testTURNUser) {
		t.Fatalf("TURNServer prints its credentials: %s", s)
	}
}

func TestRelayConfigRejectsBadServers(t *testing.T) {
	for _, s := range []TURNServer{
		{Address: "", Username: "u", Credential: "pw-xyzzy"},
		{Address: "turn.example:0", Username: "u", Credential: "pw-xyzzy"},
		{Address: "198.51.100.1:3478", Username: "", Credential: "pw-xyzzy"},
		{Address: "198.51.100.1:3478", Username: "u", Credential: ""},
	} {
		if _, err := NewRelay(RelayConfig{Servers: []TURNServer{s}}); err == nil {
			t.Errorf("%#v accepted", s)
		} else if s.Credential != "" && strings.Contains(err.Error(), s.Credential) {
			t.Errorf("error quotes the credential: %v", err)
		}
	}
	if _, err := NewRelay(RelayConfig{}); err == nil {
		t.Error("no servers accepted")
	}
}

// Two Binds, each with a relay on the same server: WireGuard packets sent
// to a relayed endpoint cross the relay and come out of the other Bind's
// relay receive function with a relayed endpoint, which WireGuard answers
// through the relay again; handshake initiations are copied to the direct
// probes.
func TestBindSendsRelayedEndpointsThroughTheRelay(t *testing.T) {
	srv := startTURN(t, "")
	inner1, inner2 := newFakeBind(), newFakeBind()
	b1, b2 := NewBind(inner1, nil), NewBind(inner2, nil)
	for _, b := range []*Bind{b1, b2} {
		r, err := NewRelay(RelayConfig{Servers: []TURNServer{srv.server()}, Log: slog.New(slog.NewTextHandler(newTestWriter(t), nil))})
		if err != nil {
			t.Fatal(err)
		}
		if old := b.AttachRelay(r); old != nil {
			t.Fatal("a new bind has a relay")
		}
		r.Start()
		t.Cleanup(r.Close)
	}
	fns1, _, err := b1.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	fns2, _, err := b2.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(fns1) != 2 {
		t.Fatalf("Open returned %d receive functions, want the inner one and the relay's", len(fns1))
	}
	dev1, dev2 := runEndpointDevice(t, fns1), runEndpointDevice(t, fns2)
	t.Cleanup(func() { b1.Close(); b2.Close(); dev1.wait(); dev2.wait() })

	waitFor(t, 10*time.Second, "allocations", func() bool {
		return b1.Relay().Relayed().IsValid() && b2.Relay().Relayed().IsValid()
	})
	a1, a2 := b1.Relay().Relayed(), b2.Relay().Relayed()
	b1.Relay().Permit([]netip.Addr{a2.Addr()})
	b2.Relay().Permit([]netip.Addr{a1.Addr()})

	// The engine marks a2 as relayed, then sets it as the endpoint.
	ep, err := b1.ParseEndpoint(a2.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ep.(*relayEndpoint); ok {
		t.Fatal("an address not marked for the relay parsed as relayed")
	}
	b1.UseRelay(a2, true)
	if ep, err = b1.ParseEndpoint(a2.String()); err != nil {
		t.Fatal(err)
	}
	if _, ok := ep.(*relayEndpoint); !ok || ep.DstToString() != a2.String() {
		t.Fatalf("marked address parsed as %T %s", ep, ep.DstToString())
	}
	direct := netip.MustParseAddrPort("198.51.100.7:51820")
	b1.SetProbes(a2, []netip.AddrPort{direct})

	init := wireGuardPacket(1, 148, [4]byte{1})
	var got endpointPacket
	waitFor(t, 10*time.Second, "the initiation through the relay", func() bool {
		if err := b1.Send([][]byte{init}, ep); err != nil && !errors.Is(err, errNoAllocation) {
			t.Fatal(err)
		}
		var ok bool
		got, ok = dev2.find(init)
		return ok
	})
	re, ok := got.ep.(*relayEndpoint)
	if !ok || re.dst != a1 {
		t.Fatalf("received with endpoint %T %s, want a relayed endpoint for %s", got.ep, got.ep.DstToString(), a1)
	}
	if b1.PathTo(a2) != PathRelay || b1.PathTo(direct) != PathDirect {
		t.Fatalf("paths: %s, %s", b1.PathTo(a2), b1.PathTo(direct))
	}
	probed := false
	for _, s := range inner1.sentPackets() {
		if s.to == direct && bytes.Equal(s.data, init) {
			probed = true
		}
	}
	if !probed {
		t.Fatal("the handshake initiation was not copied to the peer's direct address")
	}
	// One transport message per probeEvery is copied too, data or
	// keepalive: a burst costs one copy.
	b1.Send([][]byte{wireGuardPacket(4, 96, [4]byte{5}), wireGuardPacket(4, 32, [4]byte{4}), wireGuardPacket(4, 1400, [4]byte{6})}, ep)
	copies := map[int]int{}
	for _, s := range inner1.sentPackets() {
		if s.to == direct {
			copies[len(s.data)]++
		}
	}
	if copies[148] == 0 || copies[96] != 1 || len(copies) != 2 {
		t.Fatalf("copies to the direct address by size: %v, want initiations and one transport message", copies)
	}
	// The answer goes back through b2's relay to the endpoint it came
	// from, and nothing of it leaves b2's socket directly.
	resp := wireGuardPacket(2, 92, [4]byte{2})
	waitFor(t, 10*time.Second, "the response through the relay", func() bool {
		b2.Send([][]byte{resp}, got.ep)
		_, ok := dev1.find(resp)
		return ok
	})
	if n := len(inner2.sentPackets()); n != 0 {
		t.Fatalf("b2 sent %d packets directly", n)
	}
	// A transport packet that leaves directly (WireGuard roamed back)
	// flips the path.
	b1.Send([][]byte{wireGuardPacket(4, 64, [4]byte{3})}, fakeEndpoint{a2})
	if b1.PathTo(a2) != PathDirect {
		t.Fatal("a direct send to a once-relayed address still reports the relay")
	}
	// Without an allocation, a relayed send fails and nothing leaves
	// directly.
	b3 := NewBind(newFakeBind(), nil)
	if err := b3.Send([][]byte{init}, &relayEndpoint{dst: a2}); !errors.Is(err, errNoAllocation) {
		t.Fatalf("relayed send without a relay: %v", err)
	}
}

type endpointPacket struct {
	data []byte
	ep   conn.Endpoint
}

type endpointDevice struct {
	mu   sync.Mutex
	got  []endpointPacket
	done sync.WaitGroup
}

func runEndpointDevice(t *testing.T, fns []conn.ReceiveFunc) *endpointDevice {
	d := &endpointDevice{}
	for _, fn := range fns {
		d.done.Go(func() {
			packets := make([][]byte, 8)
			for i := range packets {
				packets[i] = make([]byte, 2048)
			}
			sizes := make([]int, 8)
			eps := make([]conn.Endpoint, 8)
			for {
				n, err := fn(packets, sizes, eps)
				if err != nil {
					return
				}
				d.mu.Lock()
				for i := range n {
					if sizes[i] > 0 {
						d.got = append(d.got, endpointPacket{append([]byte(nil), packets[i][:sizes[i]]...), eps[i]})
					}
				}
				d.mu.Unlock()
			}
		})
	}
	return d
}

func (d *endpointDevice) find(p []byte) (endpointPacket, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, g := range d.got {
		if bytes.Equal(g.data, p) {
			return g, true
		}
	}
	return endpointPacket{}, false
}

func (d *endpointDevice) wait() { d.done.Wait() }

// A peer relayed to the very address that is also its direct candidate
// (its NAT keeps ports, so the relay sees the same mapping) gets copies
// there directly; a direct send to that address gets none (it is the
// packet itself).
func TestProbesGoToTheRelayedAddressItselfDirectly(t *testing.T) {
	inner := newFakeBind()
	b := NewBind(inner, nil)
	peer := netip.MustParseAddrPort("198.51.100.7:51820")
	b.SetProbes(peer, []netip.AddrPort{peer})
	keepalive := wireGuardPacket(4, 32, [4]byte{1})
	if err := b.Send([][]byte{keepalive}, &relayEndpoint{dst: peer}); !errors.Is(err, errNoAllocation) {
		t.Fatalf("relayed send without a relay: %v", err)
	}
	if sent := inner.sentPackets(); len(sent) != 1 || sent[0].to != peer || !bytes.Equal(sent[0].data, keepalive) {
		t.Fatalf("sent directly: %+v, want one copy of the keepalive to %s", sent, peer)
	}
	b.Send([][]byte{keepalive}, fakeEndpoint{peer})
	if sent := inner.sentPackets(); len(sent) != 2 {
		t.Fatalf("a direct send to the probed address was copied: %d packets", len(sent))
	}
	b.PruneProbes(func(netip.AddrPort) bool { return false })
	b.Send([][]byte{keepalive}, &relayEndpoint{dst: peer})
	if sent := inner.sentPackets(); len(sent) != 2 {
		t.Fatal("pruned probes still copy")
	}
}

// A server may refuse a permission for a peer address (a policy against
// private ranges, say). coturn answers 403; pion's server answers with an
// error response that has no ERROR-CODE at all. Either is a refusal of
// that address, not a sign that the allocation is gone: the relay keeps
// its allocation, and its relayed address, and relays to the addresses
// that were granted. On the old code pion's answer made every check drop
// the allocation and make a new one, a new relayed address each time.
func TestRelayKeepsItsAllocationWhenAPeerAddressIsRefused(t *testing.T) {
	refused := netip.MustParseAddr("198.51.100.7")
	var asked atomic.Int32
	srv := startTURNWith(t, "", func(_ net.Addr, ip net.IP) bool {
		if a, _ := netip.AddrFromSlice(ip); a.Unmap() == refused {
			asked.Add(1)
			return false
		}
		return true
	}, nil)
	rcv2 := newReceived()
	r1 := newTestRelay(t, RelayConfig{Servers: []TURNServer{srv.server()}, CheckInterval: 50 * time.Millisecond}, nil)
	r2 := newTestRelay(t, RelayConfig{Servers: []TURNServer{srv.server()}, CheckInterval: 50 * time.Millisecond}, rcv2)
	waitFor(t, 10*time.Second, "both allocations", func() bool { return r1.Relayed().IsValid() && r2.Relayed().IsValid() })
	a1, a2 := r1.Relayed(), r2.Relayed()
	r1.Permit([]netip.Addr{refused, a2.Addr()})
	r2.Permit([]netip.Addr{a1.Addr()})
	waitFor(t, 10*time.Second, "the refused address asked for", func() bool { return asked.Load() > 0 })
	// Many checks later (each would have dropped the allocation before).
	time.Sleep(20 * 50 * time.Millisecond)
	if got := r1.Relayed(); got != a1 {
		t.Fatalf("relayed address %s after a refused permission, was %s: the allocation was dropped", got, a1)
	}
	if st := r1.Status(); st.Servers[0].State != TURNAllocated || st.Servers[0].Failures != 0 {
		t.Fatalf("status after a refused permission: %+v", st.Servers[0])
	}
	p := wireGuardPacket(1, 148, [4]byte{1, 2, 3, 4})
	if d := sendUntil(t, r1, p, a2, rcv2); d.from != a1 {
		t.Fatalf("relayed packet arrived from %s, want %s", d.from, a1)
	}
}

// permissionRequests counts the authenticated CreatePermission requests a
// TURN server reads (distinct transactions: a retransmission is one
// request). The first request on an allocation goes without credentials,
// to learn the server's nonce from its 401, and carries nothing the
// server acts on.
type permissionRequests struct {
	net.PacketConn
	mu  sync.Mutex
	ids map[[stun.TransactionIDSize]byte]bool
}

func (c *permissionRequests) ReadFrom(p []byte) (int, net.Addr, error) {
	n, from, err := c.PacketConn.ReadFrom(p)
	if err == nil && stun.IsMessage(p[:n]) {
		m := &stun.Message{Raw: append([]byte(nil), p[:n]...)}
		if m.Decode() == nil && m.Type == stun.NewType(stun.MethodCreatePermission, stun.ClassRequest) && m.Contains(stun.AttrMessageIntegrity) {
			c.mu.Lock()
			c.ids[m.TransactionID] = true
			c.mu.Unlock()
		}
	}
	return n, from, err
}

func (c *permissionRequests) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

// A relay behind which many peers sit asks for their permissions a batch
// at a time (RFC 8656 allows several XOR-PEER-ADDRESS attributes in one
// CreatePermission): one round trip to the server per address made a
// node with a hundred relayed peers wait a hundred round trips before the
// last of them could be reached, and again at every renewal.
func TestRelayAsksForManyPermissionsInFewRequests(t *testing.T) {
	var granted sync.Map
	var conn *permissionRequests
	srv := startTURNWith(t, "", func(_ net.Addr, ip net.IP) bool {
		a, _ := netip.AddrFromSlice(ip)
		granted.Store(a.Unmap(), true)
		return true
	}, func(pc net.PacketConn) net.PacketConn {
		conn = &permissionRequests{PacketConn: pc, ids: map[[stun.TransactionIDSize]byte]bool{}}
		return conn
	})
	r := newTestRelay(t, RelayConfig{Servers: []TURNServer{srv.server()}}, nil)
	waitFor(t, 10*time.Second, "the allocation", func() bool { return r.Relayed().IsValid() })
	var peers []netip.Addr
	for i := range 70 {
		peers = append(peers, netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)}))
	}
	r.Permit(peers)
	waitFor(t, 10*time.Second, "every permission", func() bool {
		for _, p := range peers {
			if _, ok := granted.Load(p); !ok {
				return false
			}
		}
		return true
	})
	want := (len(peers) + permissionBatch - 1) / permissionBatch
	if got := conn.count(); got > want {
		t.Fatalf("%d authenticated CreatePermission requests for %d peers; want at most %d (%d addresses each)", got, len(peers), want, permissionBatch)
	}
}
