package nat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/pion/stun/v3"
)

func TestParseBindingResponse(t *testing.T) {
	id := TransactionID{0xa, 0xb, 0xc, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	idSetter := stun.NewTransactionIDSetter(id)
	xor4 := &stun.XORMappedAddress{IP: []byte{203, 0, 113, 1}, Port: 51830}
	xor6 := &stun.XORMappedAddress{IP: netip.MustParseAddr("2001:db8::42").AsSlice(), Port: 40001}
	mapped4 := &stun.MappedAddress{IP: []byte{198, 51, 100, 9}, Port: 3000}
	ok := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	raw := func(typ stun.AttrType, v []byte) stun.Setter {
		return stun.RawAttribute{Type: typ, Length: uint16(len(v)), Value: v}
	}

	cases := []struct {
		name    string
		msg     []byte
		want    netip.AddrPort
		wantErr string // substring; "" means success
	}{
		{"xor-mapped ipv4", mustBuild(t, idSetter, stun.BindingSuccess, xor4), ok("203.0.113.1:51830"), ""},
		{"xor-mapped ipv4 with fingerprint", mustBuild(t, idSetter, stun.BindingSuccess, xor4, stun.Fingerprint), ok("203.0.113.1:51830"), ""},
		{"xor-mapped ipv6 (xor with cookie and transaction id)", mustBuild(t, idSetter, stun.BindingSuccess, xor6), ok("[2001:db8::42]:40001"), ""},
		{"mapped-address only (RFC 3489 server)", mustBuild(t, idSetter, stun.BindingSuccess, mapped4), ok("198.51.100.9:3000"), ""},
		{"both: xor-mapped wins", mustBuild(t, idSetter, stun.BindingSuccess, mapped4, xor4), ok("203.0.113.1:51830"), ""},
		{"legacy 0x8020 xor-mapped", mustBuild(t, idSetter, stun.BindingSuccess, func() stun.Setter {
			m := stun.New()
			xor4.AddTo(m)
			v, _ := m.Get(stun.AttrXORMappedAddress)
			return raw(0x8020, v)
		}()), ok("203.0.113.1:51830"), ""},
		{"software and unknown attributes are ignored", mustBuild(t, idSetter, stun.BindingSuccess, stun.NewSoftware("x"), raw(0x8099, []byte{1, 2, 3}), xor4), ok("203.0.113.1:51830"), ""},

		{"error response", mustBuild(t, idSetter, stun.BindingError, stun.CodeBadRequest), netip.AddrPort{}, "STUN error response 400"},
		{"error response without error-code", mustBuild(t, idSetter, stun.BindingError), netip.AddrPort{}, "ERROR-CODE"},
		{"error code class 2", mustBuild(t, idSetter, stun.BindingError, stun.ErrorCodeAttribute{Code: 299}), netip.AddrPort{}, "invalid ERROR-CODE"},
		{"error code number 100", mustBuild(t, idSetter, stun.BindingError, raw(stun.AttrErrorCode, []byte{0, 0, 4, 100})), netip.AddrPort{}, "invalid ERROR-CODE"},
		{"no address", mustBuild(t, idSetter, stun.BindingSuccess), netip.AddrPort{}, "neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS"},
		{"request", mustBuild(t, idSetter, stun.BindingRequest, xor4), netip.AddrPort{}, "not a response"},
		{"indication", mustBuild(t, idSetter, stun.NewType(stun.MethodBinding, stun.ClassIndication), xor4), netip.AddrPort{}, "not a response"},
		{"allocate success", mustBuild(t, idSetter, stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse), xor4), netip.AddrPort{}, "not a Binding response"},
		{"short ipv4 value", mustBuild(t, idSetter, stun.BindingSuccess, raw(stun.AttrXORMappedAddress, []byte{0, 1, 0x12, 0x34, 1, 2})), netip.AddrPort{}, "IPv4 value is 6 bytes"},
		{"long ipv4 value", mustBuild(t, idSetter, stun.BindingSuccess, raw(stun.AttrMappedAddress, []byte{0, 1, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8})), netip.AddrPort{}, "IPv4 value is 12 bytes"},
		{"short ipv6 value", mustBuild(t, idSetter, stun.BindingSuccess, raw(stun.AttrXORMappedAddress, []byte{0, 2, 0x12, 0x34, 1, 2, 3, 4})), netip.AddrPort{}, "IPv6 value is 8 bytes"},
		{"unknown family", mustBuild(t, idSetter, stun.BindingSuccess, raw(stun.AttrXORMappedAddress, []byte{0, 3, 0x12, 0x34, 1, 2, 3, 4})), netip.AddrPort{}, "unknown address family"},
		{"tiny value", mustBuild(t, idSetter, stun.BindingSuccess, raw(stun.AttrMappedAddress, []byte{0, 1})), netip.AddrPort{}, "too short"},
		{"malformed xor-mapped does not fall back", mustBuild(t, idSetter, stun.BindingSuccess, mapped4, raw(stun.AttrXORMappedAddress, []byte{0, 1, 0, 0})), netip.AddrPort{}, "XOR-MAPPED-ADDRESS"},
		{"port zero", mustBuild(t, idSetter, stun.BindingSuccess, &stun.MappedAddress{IP: []byte{1, 2, 3, 4}, Port: 0}), netip.AddrPort{}, "not a usable address"},
		{"unspecified address", mustBuild(t, idSetter, stun.BindingSuccess, &stun.XORMappedAddress{IP: []byte{0, 0, 0, 0}, Port: 9}), netip.AddrPort{}, "not a usable address"},
		{"bad fingerprint", func() []byte {
			b := bytes.Clone(mustBuild(t, idSetter, stun.BindingSuccess, xor4, stun.Fingerprint))
			b[len(b)-1] ^= 0xff
			return b
		}(), netip.AddrPort{}, "FINGERPRINT"},
		{"fingerprint not last", mustBuild(t, idSetter, stun.BindingSuccess, stun.Fingerprint, xor4), netip.AddrPort{}, "not the last"},
		{"attribute overruns the message", func() []byte {
			b := bytes.Clone(mustBuild(t, idSetter, stun.BindingSuccess, xor4))
			binary.BigEndian.PutUint16(b[22:24], 12) // XOR-MAPPED-ADDRESS claims 12 bytes, 8 remain
			return b
		}(), netip.AddrPort{}, "malformed"},
	}
	for _, c := range cases {
		gotID, got, err := ParseBindingResponse(c.msg)
		if c.wantErr == "" {
			if err != nil || got != c.want {
				t.Errorf("%s: got %v, %v; want %v", c.name, got, err, c.want)
			}
		} else if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: got %v, %v; want an error containing %q", c.name, got, err, c.wantErr)
		}
		if gotID != id {
			t.Errorf("%s: transaction id %x, want %x", c.name, gotID, id)
		}
	}

	var er *ErrorResponse
	_, _, err := ParseBindingResponse(mustBuild(t, idSetter, stun.BindingError, stun.CodeBadRequest))
	if !errors.As(err, &er) || er.Code != 400 {
		t.Errorf("error response is %#v, want *ErrorResponse with code 400", err)
	}
}

func TestParseBindingResponseRejectsNonSTUN(t *testing.T) {
	good := mustBuild(t, stun.NewTransactionIDSetter(TransactionID{1}), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: []byte{203, 0, 113, 1}, Port: 1})
	cases := map[string][]byte{
		"empty":          nil,
		"short":          good[:19],
		"top bits":       append([]byte{0xc1}, good[1:]...),
		"cookie":         append(append(bytes.Clone(good[:4]), 0, 0, 0, 0), good[8:]...),
		"truncated":      good[:len(good)-4],
		"trailing bytes": append(bytes.Clone(good), 0, 0, 0, 0),
		"wireguard":      wireGuardPacket(4, 32, cookieBytes),
	}
	for name, b := range cases {
		if _, ap, err := ParseBindingResponse(b); err == nil {
			t.Errorf("%s: parsed as %v", name, ap)
		}
	}
}

func TestBindingRequestIsWellFormed(t *testing.T) {
	req, id, err := newBindingRequest()
	if err != nil {
		t.Fatal(err)
	}
	if classify(req) != kindSTUN {
		t.Fatalf("our own request %x does not classify as STUN", req)
	}
	m := new(stun.Message)
	if err := stun.Decode(req, m); err != nil || m.Type != stun.BindingRequest || m.TransactionID != id {
		t.Fatalf("request decodes to %v (id %x), %v; want a Binding request with id %x", m.Type, m.TransactionID, err, id)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Error(err)
	}
	_, id2, _ := newBindingRequest()
	if id2 == id {
		t.Error("two requests share a transaction id")
	}
}
