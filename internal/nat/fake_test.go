package nat

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
)

// fakeEndpoint is a conn.Endpoint with only a destination.
type fakeEndpoint struct{ dst netip.AddrPort }

func (e fakeEndpoint) ClearSrc()           {}
func (e fakeEndpoint) SrcToString() string { return "" }
func (e fakeEndpoint) DstToString() string { return e.dst.String() }
func (e fakeEndpoint) DstToBytes() []byte  { b, _ := e.dst.MarshalBinary(); return b }
func (e fakeEndpoint) DstIP() netip.Addr   { return e.dst.Addr() }
func (e fakeEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

type datagram struct {
	from netip.AddrPort
	data []byte
}

type sentPacket struct {
	at   time.Time
	to   netip.AddrPort
	data []byte
}

// fakeBind is an in-memory inner bind: what Send writes is recorded and
// offered to respond; what is pushed to in comes out of the receive
// function, several datagrams per batch when they are queued together.
type fakeBind struct {
	in      chan []datagram
	respond func(sentPacket) []datagram // may be nil; runs on the sender

	mu      sync.Mutex
	sent    []sentPacket
	closed  chan struct{}
	sendErr error
}

func newFakeBind() *fakeBind { return &fakeBind{in: make(chan []datagram, 16)} }

func (f *fakeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	f.mu.Lock()
	f.closed = make(chan struct{})
	closed := f.closed
	f.mu.Unlock()
	if port == 0 {
		port = 51830
	}
	recv := func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case batch := <-f.in:
			n := 0
			for _, d := range batch {
				if n == len(packets) {
					break
				}
				sizes[n] = copy(packets[n], d.data)
				eps[n] = fakeEndpoint{d.from}
				n++
			}
			return n, nil
		case <-closed:
			return 0, net.ErrClosed
		}
	}
	return []conn.ReceiveFunc{recv}, port, nil
}

func (f *fakeBind) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed != nil {
		close(f.closed)
		f.closed = nil
	}
	return nil
}

func (f *fakeBind) SetMark(uint32) error { return nil }
func (f *fakeBind) BatchSize() int       { return 8 }

func (f *fakeBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	return fakeEndpoint{ap}, err
}

func (f *fakeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	f.mu.Lock()
	if f.sendErr != nil {
		f.mu.Unlock()
		return f.sendErr
	}
	var out []sentPacket
	for _, b := range bufs {
		p := sentPacket{at: time.Now(), to: ep.(fakeEndpoint).dst, data: append([]byte(nil), b...)}
		f.sent = append(f.sent, p)
		out = append(out, p)
	}
	respond := f.respond
	f.mu.Unlock()
	if respond != nil {
		for _, p := range out {
			if ds := respond(p); len(ds) > 0 {
				f.in <- ds
			}
		}
	}
	return nil
}

func (f *fakeBind) sentPackets() []sentPacket {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sentPacket(nil), f.sent...)
}

// device stands in for wireguard-go: it runs the receive functions of an
// opened bind and records every packet they let through. Call stop after
// closing the bind.
type device struct {
	mu   sync.Mutex
	got  [][]byte
	done sync.WaitGroup
}

func runDevice(t testing.TB, fns []conn.ReceiveFunc, batch int) *device {
	t.Helper()
	d := &device{}
	for _, fn := range fns {
		d.done.Go(func() {
			packets := make([][]byte, batch)
			for i := range packets {
				packets[i] = make([]byte, 2048)
			}
			sizes := make([]int, batch)
			eps := make([]conn.Endpoint, batch)
			for {
				n, err := fn(packets, sizes, eps)
				if err != nil {
					return
				}
				d.mu.Lock()
				for i := range n {
					if sizes[i] > 0 {
						d.got = append(d.got, append([]byte(nil), packets[i][:sizes[i]]...))
					}
				}
				d.mu.Unlock()
			}
		})
	}
	return d
}

func (d *device) received() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][]byte(nil), d.got...)
}

// bindingSuccess builds the answer a STUN server gives to req.
func bindingSuccess(t testing.TB, req []byte, mapped netip.AddrPort, extra ...stun.Setter) []byte {
	t.Helper()
	m := new(stun.Message)
	if err := stun.Decode(req, m); err != nil {
		t.Fatalf("decode request: %v", err)
	}
	setters := []stun.Setter{m, stun.BindingSuccess, &stun.XORMappedAddress{IP: mapped.Addr().AsSlice(), Port: int(mapped.Port())}}
	setters = append(setters, extra...)
	setters = append(setters, stun.Fingerprint)
	resp, err := stun.Build(setters...)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Raw
}

// wireGuardPacket returns a WireGuard-shaped message of the given type and
// size whose bytes 4..7 are b4 (the sender or receiver index).
func wireGuardPacket(typ byte, size int, b4 [4]byte) []byte {
	p := make([]byte, size)
	p[0] = typ
	copy(p[4:8], b4[:])
	for i := 8; i < size; i++ {
		p[i] = byte(i * 7)
	}
	return p
}

var cookieBytes = [4]byte{0x21, 0x12, 0xA4, 0x42}
