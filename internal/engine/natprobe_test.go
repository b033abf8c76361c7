package engine

import (
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/conn"
)

// startFakeSTUN runs a STUN server on loopback that answers each new
// Binding request (retransmissions are ignored) with the next reflexive
// address the test puts on the returned channel.
func startFakeSTUN(t *testing.T) (string, chan<- netip.AddrPort) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	next := make(chan netip.AddrPort, 8)
	go func() {
		seen := map[[stun.TransactionIDSize]byte]bool{}
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil || req.Type != stun.BindingRequest || seen[req.TransactionID] {
				continue
			}
			seen[req.TransactionID] = true
			ap := <-next
			resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: ap.Addr().AsSlice(), Port: int(ap.Port())}, stun.Fingerprint)
			if err != nil {
				panic(err)
			}
			pc.WriteTo(resp.Raw, from)
		}
	}()
	return pc.LocalAddr().String(), next
}

// openNATBind opens the global device's NAT bind on a free port and
// receives on it, as wireguard-go does for a real device (the fake backend
// never opens it).
func openNATBind(t *testing.T, h *harness) {
	t.Helper()
	b := h.e.natBind()
	if b == nil {
		t.Fatal("no NAT-traversal bind on the global device")
	}
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	for _, fn := range fns {
		go func(fn conn.ReceiveFunc) {
			bufs := make([][]byte, b.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, 1500)
			}
			sizes := make([]int, len(bufs))
			eps := make([]conn.Endpoint, len(bufs))
			for {
				if _, err := fn(bufs, sizes, eps); err != nil {
					return
				}
			}
		}(fn)
	}
}

// Probes of the reflexive address run concurrently (nat_tick, the NAT
// loop's refresh, the probe after the global device came up). A probe
// that started first and finishes last must not overwrite what the probe
// started after it recorded, nor announce the address it found as the
// node's new endpoint: the main daemon would hand peers an endpoint the
// node's status no longer lists, or one a newer probe already replaced.
func TestOlderSTUNProbeDoesNotOverwriteANewerOne(t *testing.T) {
	server, next := startFakeSTUN(t)
	h := newHarnessOn(t, wg.KindUserspace, func(c *Config) {
		c.NAT = &NATConfig{Servers: []string{server}, RefreshInterval: -1}
	})
	var armed atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	h.e.testHook = func(p string) {
		if p == "nat.probed" && armed.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	a := netip.MustParseAddrPort("198.51.100.1:40001")
	older := netip.MustParseAddrPort("198.51.100.2:40002")
	newer := netip.MustParseAddrPort("198.51.100.3:40003")

	// The probe after setup (probeSoon) finds a.
	next <- a
	req := globalReq("10.200.3.0/24")
	req.NATEnabled = true
	h.ok(req)
	openNATBind(t, h)
	own := h.status().PublicKey
	reflexive := func() []string {
		h.mu.Lock()
		defer h.mu.Unlock()
		var out []string
		for _, ev := range h.events {
			if e, ok := ev.(protocol.NATEndpointChanged); ok && e.Pubkey == own && e.Candidate == "reflexive" {
				out = append(out, e.Endpoint)
			}
		}
		return out
	}
	waitEvent(t, h, func(ev protocol.Event) bool {
		e, ok := ev.(protocol.NATEndpointChanged)
		return ok && e.Endpoint == a.String()
	})

	// The older probe gets its answer and is held before recording it.
	armed.Store(true)
	next <- older
	done := make(chan protocol.Response, 1)
	go func() { done <- h.e.Handle(t.Context(), protocol.NATTick{}) }()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the first nat_tick never got its STUN answer")
	}
	// The newer probe runs to the end meanwhile.
	next <- newer
	h.ok(protocol.NATTick{})
	close(release)
	<-done

	st := h.status()
	if st.NAT == nil {
		t.Fatal("no NAT status")
	}
	if !slices.Equal(st.NAT.ReflexiveAddrs, []string{newer.String()}) {
		t.Errorf("status lists reflexive %v after the newer probe found %s: the older probe's %s overwrote it", st.NAT.ReflexiveAddrs, newer, older)
	}
	if got, want := reflexive(), []string{a.String(), newer.String()}; !slices.Equal(got, want) {
		t.Errorf("nat_endpoint_changed for our reflexive endpoint: %v, want %v", got, want)
	}
}
