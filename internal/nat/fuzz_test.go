package nat

// Fuzz targets. The committed corpora under testdata/fuzz hold real answers
// of coturn 4.6.1 and stund 0.97 (captured on this project's test
// namespaces) besides built messages and WireGuard packets.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
)

func FuzzParseBindingResponse(f *testing.F) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ap, err := ParseBindingResponse(b)
		var er *ErrorResponse
		if err != nil && !errors.As(err, &er) {
			return
		}
		// Whatever parses as a response is what the receive path takes
		// off WireGuard's hands, and carries its own transaction ID.
		if classify(b) != kindSTUN {
			t.Fatalf("parsed a message the demultiplexer classifies as %v", classify(b))
		}
		if !bytes.Equal(id[:], b[8:20]) {
			t.Fatalf("transaction id %x, header has %x", id, b[8:20])
		}
		if er != nil {
			if er.Code < 300 || er.Code > 699 {
				t.Fatalf("error code %d outside RFC 5389's 300..699", er.Code)
			}
			return
		}
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().Is4In6() || ap.Addr().Zone() != "" {
			t.Fatalf("parsed an unusable address %v", ap)
		}
		// The address survives a round trip through pion's encoder.
		again, err := stun.Build(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: ap.Addr().AsSlice(), Port: int(ap.Port())})
		if err != nil {
			t.Fatal(err)
		}
		id2, ap2, err := ParseBindingResponse(again.Raw)
		if err != nil || id2 != id || ap2 != ap {
			t.Fatalf("round trip of %v: %v %x, %v", ap, ap2, id2, err)
		}
	})
}

func FuzzDemux(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		k := classify(p)
		if len(p) >= 4 && p[0] >= 1 && p[0] <= 4 && p[1] == 0 && p[2] == 0 && p[3] == 0 && k != kindWireGuard {
			t.Fatalf("a WireGuard-typed packet classifies as %v", k)
		}
		if k == kindSTUN && (!stun.IsMessage(p) || p[0]&0xC0 != 0 || stunHeaderSize+int(binary.BigEndian.Uint16(p[2:4])) != len(p)) {
			t.Fatalf("a packet without a STUN header classifies as STUN")
		}
		_, _, perr := ParseBindingResponse(p)
		var er *ErrorResponse
		answers := perr == nil || errors.As(perr, &er)
		if answers && k != kindSTUN {
			t.Fatalf("a valid STUN response classifies as %v", k)
		}

		// Through the receive filter, with a Discover waiting for exactly
		// this transaction from this source.
		b := NewBind(newFakeBind(), nil)
		from := netip.MustParseAddrPort("192.0.2.1:3478")
		tx := &transaction{server: from, done: make(chan result, 1)}
		if len(p) >= stunHeaderSize {
			var id TransactionID
			copy(id[:], p[8:stunHeaderSize])
			b.pending[id] = tx
			b.waiting.Add(1)
		}
		buf := make([]byte, len(p), len(p)+16)
		copy(buf, p)
		packets := [][]byte{buf, wireGuardPacket(4, 32, cookieBytes)}
		sizes := []int{len(p), 32}
		eps := []conn.Endpoint{fakeEndpoint{from}, fakeEndpoint{from}}
		b.filter(packets, sizes, eps)
		if (sizes[0] == 0) != (k == kindSTUN) && len(p) > 0 {
			t.Fatalf("%v packet: size %d after the filter", k, sizes[0])
		}
		if sizes[1] != 32 {
			t.Fatal("the filter took the WireGuard packet next to it")
		}
		if !bytes.Equal(buf, p) {
			t.Fatal("the filter changed the packet")
		}
		select {
		case r := <-tx.done:
			if !answers || (r.err == nil) != (perr == nil) {
				t.Fatalf("Discover got %v, %v from a packet that parses as %v", r.addr, r.err, perr)
			}
		default:
			if answers {
				t.Fatalf("a valid response for the pending transaction did not reach it")
			}
		}
	})
}
