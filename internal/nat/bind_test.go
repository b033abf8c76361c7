package nat

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
)

// serveSTUN answers Binding requests on pc until it is closed: the tiny STUN
// server of the tests, here and in the namespace helper process.
func serveSTUN(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		req := new(stun.Message)
		if err := stun.Decode(buf[:n], req); err != nil || req.Type != stun.BindingRequest {
			continue
		}
		ua := from.(*net.UDPAddr)
		resp, err := stun.Build(req, stun.BindingSuccess, &stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}, stun.Fingerprint)
		if err != nil {
			continue
		}
		pc.WriteTo(resp.Raw, from)
	}
}

func startSTUNServer(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go serveSTUN(pc)
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestRealSocketCarriesSTUNAndWireGuard runs the default wireguard-go bind on
// loopback (no privileges needed): STUN answers come back through the very
// socket WireGuard listens on and never reach the device, while every
// WireGuard-shaped datagram sent at the same time does.
func TestRealSocketCarriesSTUNAndWireGuard(t *testing.T) {
	b := NewBind(nil, nil)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Skipf("cannot open a UDP socket here: %v", err)
	}
	var names []string
	for _, fn := range fns {
		names = append(names, fn.PrettyName())
	}
	if !slices.Contains(names, "v4") {
		t.Errorf("receive functions are named %v; wireguard-go's log names (v4, v6) are lost", names)
	}
	dev := runDevice(t, fns, b.BatchSize())
	t.Cleanup(func() { b.Close(); dev.done.Wait() })

	s1 := startSTUNServer(t, "127.0.0.1:0")
	s2 := startSTUNServer(t, "127.0.0.1:0")
	self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)

	// A peer floods the port with WireGuard-shaped datagrams meanwhile,
	// including ones whose index bytes equal the STUN magic cookie.
	peer, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(self))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	const wgPackets = 400
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range wgPackets {
			idx := [4]byte{byte(i), byte(i >> 8), 7, 7}
			if i%10 == 0 {
				idx = cookieBytes
			}
			peer.Write(wireGuardPacket(byte(1+i%4), 32+i%1400, idx))
			if i%50 == 0 {
				time.Sleep(time.Millisecond) // let the socket buffer drain
			}
		}
	}()
	for range 20 {
		got, err := b.Discover(t.Context(), s1)
		if err != nil || got != self {
			t.Fatalf("Discover(%v) = %v, %v; want %v (the WireGuard socket itself)", s1, got, err, self)
		}
	}
	res, err := b.Probe(t.Context(), []netip.AddrPort{s1, s2})
	if err != nil || res.Behaviour != BehaviourNone || res.LocalPort != port || !slices.Equal(res.Reflexive, []netip.AddrPort{self}) {
		t.Errorf("Probe on loopback = %+v, %v; want behaviour none at %v", res, err, self)
	}
	<-sent

	deadline := time.Now().Add(10 * time.Second)
	for len(dev.received()) < wgPackets && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := dev.received()
	for _, p := range got {
		if classify(p) != kindWireGuard {
			t.Fatalf("the device received a %v packet: %x", classify(p), p[:min(len(p), 32)])
		}
	}
	if len(got) != wgPackets {
		t.Errorf("the device received %d of %d WireGuard packets", len(got), wgPackets)
	}
}

type socketBinder struct {
	*fakeBind
	calls []uint32
}

func (s *socketBinder) BindSocketToInterface4(i uint32, _ bool) error {
	s.calls = append(s.calls, i)
	return nil
}
func (s *socketBinder) BindSocketToInterface6(i uint32, _ bool) error {
	s.calls = append(s.calls, i+100)
	return nil
}

func TestOptionalInterfacesPassThrough(t *testing.T) {
	plain := NewBind(newFakeBind(), nil)
	if err := plain.BindSocketToInterface4(3, false); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("BindSocketToInterface4 on a bind without it: %v", err)
	}
	if _, err := plain.PeekLookAtSocketFd6(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("PeekLookAtSocketFd6 on a bind without it: %v", err)
	}
	if plain.BatchSize() != 8 {
		t.Errorf("BatchSize %d, want the inner bind's 8", plain.BatchSize())
	}
	sb := &socketBinder{fakeBind: newFakeBind()}
	b := NewBind(sb, nil)
	if err := b.BindSocketToInterface4(3, false); err != nil {
		t.Fatal(err)
	}
	if err := b.BindSocketToInterface6(4, true); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sb.calls, []uint32{3, 104}) {
		t.Errorf("inner saw %v", sb.calls)
	}
	var _ conn.Bind = b
}
