package nat

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/stun/v3"
)

var (
	server1 = netip.MustParseAddrPort("192.0.2.10:3478")
	server2 = netip.MustParseAddrPort("198.51.100.20:19302")
	public  = netip.MustParseAddrPort("203.0.113.1:51830")
)

// harness is a Bind over a fakeBind, opened, with a device reading it.
type harness struct {
	fake *fakeBind
	bind *Bind
	dev  *device
}

// newHarness must run inside a synctest bubble; call h.close before the
// bubble ends.
func newHarness(t *testing.T) *harness {
	t.Helper()
	fake := newFakeBind()
	b := NewBind(fake, nil)
	fns, port, err := b.Open(51830)
	if err != nil || port != 51830 {
		t.Fatalf("Open: port %d, %v", port, err)
	}
	return &harness{fake: fake, bind: b, dev: runDevice(t, fns, 4)}
}

func (h *harness) close() {
	h.bind.Close()
	h.dev.done.Wait()
}

// answerAfter answers a request only from its n-th transmission on (1 =
// the first), as the server at from, reporting mapped.
func answerAfter(t *testing.T, n int, mapped netip.AddrPort) func(sentPacket) []datagram {
	seen := 0
	return func(p sentPacket) []datagram {
		seen++
		if seen < n {
			return nil
		}
		return []datagram{{from: p.to, data: bindingSuccess(t, p.data, mapped)}}
	}
}

func TestDiscoverReturnsTheReflexiveAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		h.fake.respond = answerAfter(t, 1, public)
		got, err := h.bind.Discover(t.Context(), server1)
		if err != nil || got != public {
			t.Fatalf("Discover = %v, %v; want %v", got, err, public)
		}
		sent := h.fake.sentPackets()
		if len(sent) != 1 || sent[0].to != server1 {
			t.Fatalf("sent %d packets (%v), want one to %v", len(sent), sent, server1)
		}
		// The request is a Binding request with FINGERPRINT that a server
		// can decode.
		m := new(stun.Message)
		if err := stun.Decode(sent[0].data, m); err != nil || m.Type != stun.BindingRequest {
			t.Fatalf("request %x: type %v, %v", sent[0].data, m.Type, err)
		}
		if err := stun.Fingerprint.Check(m); err != nil {
			t.Errorf("request fingerprint: %v", err)
		}
		synctest.Wait()
		if got := h.dev.received(); len(got) != 0 {
			t.Errorf("the STUN response reached the device: %x", got)
		}
	})
}

func TestDiscoverRetransmitsWithDoublingTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		h.fake.respond = answerAfter(t, 4, public)
		start := time.Now()
		got, err := h.bind.Discover(t.Context(), server1)
		if err != nil || got != public {
			t.Fatalf("Discover = %v, %v", got, err)
		}
		sent := h.fake.sentPackets()
		wantAt := []time.Duration{0, 250 * time.Millisecond, 750 * time.Millisecond, 1750 * time.Millisecond}
		if len(sent) != len(wantAt) {
			t.Fatalf("sent %d requests, want %d", len(sent), len(wantAt))
		}
		for i, p := range sent {
			if at := p.at.Sub(start); at != wantAt[i] {
				t.Errorf("request %d sent at +%v, want +%v", i+1, at, wantAt[i])
			}
			if !bytes.Equal(p.data, sent[0].data) {
				t.Errorf("retransmission %d differs from the first request (RFC 5389: same transaction)", i)
			}
		}
	})
}

func TestDiscoverGivesUpAfterFiveRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		start := time.Now()
		_, err := h.bind.Discover(t.Context(), server1)
		if err == nil {
			t.Fatal("Discover succeeded without an answer")
		}
		if elapsed := time.Since(start); elapsed != 7750*time.Millisecond {
			t.Errorf("gave up after %v, want 7.75s (250ms doubling, 5 requests, last wait 4s)", elapsed)
		}
		if n := len(h.fake.sentPackets()); n != 5 {
			t.Errorf("sent %d requests, want 5", n)
		}
		for _, want := range []string{server1.String(), "51830", "5 binding requests"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
	})
}

func TestDiscoverStopsWhenTheContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		ctx, cancel := context.WithTimeout(t.Context(), 600*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := h.bind.Discover(ctx, server1)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), server1.String()) {
			t.Fatalf("Discover error %v, want the deadline, naming %v", err, server1)
		}
		if elapsed := time.Since(start); elapsed != 600*time.Millisecond {
			t.Errorf("returned after %v, want at the deadline (600ms)", elapsed)
		}
		if n := len(h.fake.sentPackets()); n != 2 {
			t.Errorf("sent %d requests before the deadline, want 2 (at 0 and 250ms)", n)
		}
		if h.bind.waiting.Load() != 0 || len(h.bind.pending) != 0 {
			t.Errorf("transaction left pending after cancel")
		}
	})
}

func TestDiscoverFailsClearlyWhenTheBindIsNotOpen(t *testing.T) {
	b := NewBind(newFakeBind(), nil)
	if _, err := b.Discover(t.Context(), server1); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("Discover before Open: %v, want ErrNotOpen", err)
	}
	if _, err := b.Probe(t.Context(), []netip.AddrPort{server1}); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("Probe before Open: %v, want ErrNotOpen", err)
	}
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	b.Close()
	_, err := b.Discover(t.Context(), server1)
	if !errors.Is(err, ErrNotOpen) || !strings.Contains(err.Error(), "device up") {
		t.Fatalf("Discover after Close: %v", err)
	}
	if _, open := b.Port(); open {
		t.Error("Port reports open after Close")
	}
}

func TestCloseEndsAPendingDiscover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		errc := make(chan error, 1)
		go func() {
			_, err := h.bind.Discover(t.Context(), server1)
			errc <- err
		}()
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		h.close()
		err := <-errc
		if !errors.Is(err, ErrNotOpen) {
			t.Fatalf("Discover during Close: %v, want ErrNotOpen", err)
		}
		if time.Since(start) != 0 {
			t.Errorf("Discover returned %v after Close, want at once", time.Since(start))
		}
	})
}

func TestDiscoverReportsSendErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		h.fake.sendErr = syscall.ENETUNREACH
		_, err := h.bind.Discover(t.Context(), server1)
		if !errors.Is(err, syscall.ENETUNREACH) || !strings.Contains(err.Error(), server1.String()) {
			t.Fatalf("Discover = %v, want ENETUNREACH naming the server", err)
		}
	})
}

func TestDiscoverIgnoresForgedAndStrayResponses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		forged := netip.MustParseAddrPort("192.0.2.66:6666")
		h.fake.respond = func(p sentPacket) []datagram {
			other := mustBuild(t, stun.NewTransactionIDSetter(TransactionID{0xff}), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: []byte{10, 6, 6, 6}, Port: 6})
			spoofed := bindingSuccess(t, p.data, forged)
			corrupt := bytes.Clone(bindingSuccess(t, p.data, forged))
			corrupt[len(corrupt)-1] ^= 1 // breaks the fingerprint
			return []datagram{
				{from: p.to, data: other}, // someone else's transaction
				{from: netip.MustParseAddrPort("192.0.2.66:3478"), data: spoofed}, // right ID, wrong source
				{from: p.to, data: corrupt},                                       // right source, bad message
				{from: p.to, data: bindingSuccess(t, p.data, public)},             // the answer
			}
		}
		got, err := h.bind.Discover(t.Context(), server1)
		if err != nil || got != public {
			t.Fatalf("Discover = %v, %v; want %v", got, err, public)
		}
		synctest.Wait()
		if got := h.dev.received(); len(got) != 0 {
			t.Errorf("%d STUN packets reached the device", len(got))
		}
		if n := h.bind.unsolicited.Load(); n != 2 {
			t.Errorf("unsolicited count %d, want 2 (stray ID, wrong source)", n)
		}
	})
}

func TestDiscoverReturnsErrorResponses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		h.fake.respond = func(p sentPacket) []datagram {
			m := new(stun.Message)
			stun.Decode(p.data, m)
			resp := mustBuild(t, m, stun.BindingError, stun.ErrorCodeAttribute{Code: stun.CodeUnknownAttribute, Reason: []byte("no thanks")})
			return []datagram{{from: p.to, data: resp}}
		}
		_, err := h.bind.Discover(t.Context(), server1)
		var er *ErrorResponse
		if !errors.As(err, &er) || er.Code != 420 || er.Reason != "no thanks" {
			t.Fatalf("Discover = %v, want a 420 error response", err)
		}
		if !strings.Contains(err.Error(), server1.String()) {
			t.Errorf("error %q does not name the server", err)
		}
	})
}

func TestConcurrentDiscoversGetTheirOwnAnswers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		mappedBy := map[netip.AddrPort]netip.AddrPort{
			server1: netip.MustParseAddrPort("203.0.113.1:1111"),
			server2: netip.MustParseAddrPort("203.0.113.1:2222"),
		}
		// Hold the first request back and answer both in one batch, in
		// the reverse order.
		var (
			mu   sync.Mutex
			held []datagram
		)
		h.fake.respond = func(p sentPacket) []datagram {
			mu.Lock()
			defer mu.Unlock()
			d := datagram{from: p.to, data: bindingSuccess(t, p.data, mappedBy[p.to])}
			if held == nil {
				held = []datagram{d}
				return nil
			}
			return []datagram{d, held[0]}
		}
		res, err := h.bind.Probe(t.Context(), []netip.AddrPort{server1, server2, server1})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Reflexive) != 2 || res.Reflexive[0] != mappedBy[server1] || res.Reflexive[1] != mappedBy[server2] {
			t.Errorf("Reflexive = %v, want %v then %v", res.Reflexive, mappedBy[server1], mappedBy[server2])
		}
		if res.Behaviour != BehaviourEndpointDependent || res.LocalPort != 51830 || len(res.Errors) != 0 {
			t.Errorf("Probe = %+v", res)
		}
		if n := len(h.fake.sentPackets()); n != 2 {
			t.Errorf("sent %d requests for 2 distinct servers", n)
		}
	})
}

func TestProbeReportsPartialFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		defer h.close()
		h.fake.respond = func(p sentPacket) []datagram {
			if p.to != server1 {
				return nil
			}
			return []datagram{{from: p.to, data: bindingSuccess(t, p.data, public)}}
		}
		res, err := h.bind.Probe(t.Context(), []netip.AddrPort{server1, server2})
		if err != nil {
			t.Fatal(err)
		}
		if res.Behaviour != BehaviourUnknown || len(res.Reflexive) != 1 || len(res.Errors) != 1 ||
			!strings.Contains(res.Errors[0].Error(), server2.String()) {
			t.Errorf("Probe = %+v", res)
		}

		h.fake.respond = nil
		_, err = h.bind.Probe(t.Context(), []netip.AddrPort{server1, server2})
		if err == nil || !strings.Contains(err.Error(), server1.String()) || !strings.Contains(err.Error(), server2.String()) {
			t.Errorf("Probe with no answers: %v", err)
		}
	})
}

func TestBehaviour(t *testing.T) {
	local := netip.MustParseAddr("10.0.0.2")
	isLocal := func(a netip.Addr) bool { return a == local }
	ap := netip.MustParseAddrPort
	cases := []struct {
		answers []netip.AddrPort
		want    string
	}{
		{[]netip.AddrPort{ap("10.0.0.2:51830")}, BehaviourNone},
		{[]netip.AddrPort{ap("10.0.0.2:51830"), ap("10.0.0.2:51830")}, BehaviourNone},
		{[]netip.AddrPort{ap("203.0.113.1:51830")}, BehaviourUnknown},
		{[]netip.AddrPort{ap("10.0.0.2:40000")}, BehaviourUnknown},
		{[]netip.AddrPort{ap("203.0.113.1:51830"), ap("203.0.113.1:51830")}, BehaviourEndpointIndependent},
		{[]netip.AddrPort{ap("203.0.113.1:40000"), ap("203.0.113.1:40000"), ap("203.0.113.1:40000")}, BehaviourEndpointIndependent},
		{[]netip.AddrPort{ap("203.0.113.1:40000"), ap("203.0.113.1:40001")}, BehaviourEndpointDependent},
		{[]netip.AddrPort{ap("203.0.113.1:40000"), ap("203.0.113.2:40000")}, BehaviourEndpointDependent},
		{[]netip.AddrPort{ap("10.0.0.2:51830"), ap("203.0.113.1:51830")}, BehaviourEndpointDependent},
	}
	for _, c := range cases {
		if got := behaviour(c.answers, 51830, isLocal); got != c.want {
			t.Errorf("behaviour(%v) = %q, want %q", c.answers, got, c.want)
		}
	}
}
