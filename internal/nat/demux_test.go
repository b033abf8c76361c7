package nat

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
)

func mustBuild(t testing.TB, setters ...stun.Setter) []byte {
	t.Helper()
	m, err := stun.Build(setters...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func TestClassify(t *testing.T) {
	id := stun.NewTransactionIDSetter(TransactionID{1, 2, 3})
	mapped := &stun.XORMappedAddress{IP: []byte{192, 0, 2, 7}, Port: 40000}
	success := mustBuild(t, id, stun.BindingSuccess, mapped, stun.Fingerprint)
	cases := []struct {
		name string
		p    []byte
		want packetKind
	}{
		{"wireguard handshake initiation", wireGuardPacket(1, 148, [4]byte{9, 9, 9, 9}), kindWireGuard},
		{"wireguard handshake response", wireGuardPacket(2, 92, [4]byte{9, 9, 9, 9}), kindWireGuard},
		{"wireguard cookie reply", wireGuardPacket(3, 64, [4]byte{9, 9, 9, 9}), kindWireGuard},
		{"wireguard transport, keepalive", wireGuardPacket(4, 32, [4]byte{9, 9, 9, 9}), kindWireGuard},
		{"wireguard transport, full", wireGuardPacket(4, 1452, [4]byte{9, 9, 9, 9}), kindWireGuard},
		// The sender/receiver index is random: one in 2³² equals the cookie.
		{"wireguard initiation with the cookie as sender index", wireGuardPacket(1, 148, cookieBytes), kindWireGuard},
		{"wireguard transport with the cookie as receiver index", wireGuardPacket(4, 32, cookieBytes), kindWireGuard},
		{"wireguard-typed 20 bytes with the cookie", wireGuardPacket(1, 20, cookieBytes), kindWireGuard},
		{"stun binding success", success, kindSTUN},
		{"stun binding request", mustBuild(t, id, stun.BindingRequest), kindSTUN},
		{"stun binding request with fingerprint", mustBuild(t, id, stun.BindingRequest, stun.Fingerprint), kindSTUN},
		{"stun binding error", mustBuild(t, id, stun.BindingError, stun.CodeBadRequest), kindSTUN},
		{"stun binding indication", mustBuild(t, id, stun.NewType(stun.MethodBinding, stun.ClassIndication)), kindSTUN},
		{"stun allocate success", mustBuild(t, id, stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse), mapped), kindSTUN},
		{"stun truncated", success[:len(success)-4], kindOther},
		{"stun with trailing bytes", append(append([]byte(nil), success...), 0, 0, 0, 0), kindOther},
		{"stun with a top bit set", func() []byte { p := bytes.Clone(success); p[0] |= 0x80; return p }(), kindOther},
		{"stun with a wrong cookie", func() []byte { p := bytes.Clone(success); p[7] ^= 1; return p }(), kindOther},
		{"stun with an unpadded length", func() []byte { p := bytes.Clone(success); p[3]++; return append(p, 0) }(), kindOther},
		{"empty", nil, kindOther},
		{"three bytes", []byte{1, 0, 0}, kindOther},
		{"type 5", wireGuardPacket(5, 148, [4]byte{}), kindOther},
		{"type 0", wireGuardPacket(0, 148, [4]byte{}), kindOther},
		{"type 1 with a nonzero byte 1", func() []byte { p := wireGuardPacket(1, 148, [4]byte{}); p[1] = 1; return p }(), kindOther},
		{"dns query", []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1}, kindOther},
		{"zeros", make([]byte, 64), kindOther},
	}
	for _, c := range cases {
		if got := classify(c.p); got != c.want {
			t.Errorf("%s (%d bytes): classify = %v, want %v", c.name, len(c.p), got, c.want)
		}
	}
}

func TestFilterTakesOnlySTUNOutOfABatch(t *testing.T) {
	b := NewBind(newFakeBind(), nil)
	id := stun.NewTransactionIDSetter(TransactionID{7})
	mapped := &stun.XORMappedAddress{IP: []byte{192, 0, 2, 7}, Port: 40000}
	in := [][]byte{
		wireGuardPacket(1, 148, cookieBytes),
		mustBuild(t, id, stun.BindingSuccess, mapped, stun.Fingerprint),
		wireGuardPacket(4, 1452, [4]byte{1, 2, 3, 4}),
		mustBuild(t, id, stun.BindingRequest),
		{0xde, 0xad, 0xbe, 0xef},
		wireGuardPacket(4, 32, cookieBytes),
		nil, // an element the inner bind left empty
	}
	packets := make([][]byte, len(in))
	sizes := make([]int, len(in))
	eps := make([]conn.Endpoint, len(in))
	for i, p := range in {
		packets[i] = make([]byte, 2048)
		sizes[i] = copy(packets[i], p)
		eps[i] = fakeEndpoint{netip.MustParseAddrPort("192.0.2.1:3478")}
	}
	b.filter(packets, sizes, eps)
	for i, p := range in {
		wantSize := len(p)
		if classify(p) == kindSTUN {
			wantSize = 0
		}
		if sizes[i] != wantSize {
			t.Errorf("packet %d (%v): size %d after the filter, want %d", i, classify(p), sizes[i], wantSize)
		}
		if !bytes.Equal(packets[i][:len(p)], p) {
			t.Errorf("packet %d: the filter changed its bytes", i)
		}
	}
	if got := b.unsolicited.Load(); got != 2 {
		t.Errorf("unsolicited STUN count %d, want 2 (nothing was pending)", got)
	}
}
