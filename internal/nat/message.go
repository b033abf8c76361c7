package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/pion/stun/v3"
)

const (
	stunHeaderSize = 20
	magicCookie    = 0x2112A442

	familyIPv4 = 0x01
	familyIPv6 = 0x02
)

// TransactionID identifies one STUN transaction (RFC 5389 §6): a response
// carries the ID of the request it answers.
type TransactionID = [stun.TransactionIDSize]byte

// ErrorResponse is a STUN Binding error response: the server understood the
// request and refused it.
type ErrorResponse struct {
	Code   int    // 300..699, e.g. 400 Bad Request, 420 Unknown Attribute
	Reason string // the server's reason phrase, possibly empty
}

func (e *ErrorResponse) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("STUN error response %d", e.Code)
	}
	return fmt.Sprintf("STUN error response %d (%q)", e.Code, e.Reason)
}

// newBindingRequest returns a Binding request with a fresh random
// transaction ID. FINGERPRINT is added because the request shares its
// socket with another protocol (RFC 5389 §8).
func newBindingRequest() ([]byte, TransactionID, error) {
	id := stun.NewTransactionID()
	m, err := stun.Build(stun.NewTransactionIDSetter(id), stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return nil, id, fmt.Errorf("build STUN binding request: %w", err)
	}
	return m.Raw, id, nil
}

// ParseBindingResponse parses a STUN Binding response and returns its
// transaction ID and the reflexive address it reports: XOR-MAPPED-ADDRESS,
// or MAPPED-ADDRESS from servers that only speak RFC 3489. The transaction
// ID is returned whenever the header is valid, so that an error response
// (reported as an *ErrorResponse) can still be matched to its request.
// b must be exactly one message, as one UDP datagram carries it.
func ParseBindingResponse(b []byte) (TransactionID, netip.AddrPort, error) {
	var id TransactionID
	if len(b) < stunHeaderSize {
		return id, netip.AddrPort{}, fmt.Errorf("STUN message of %d bytes is shorter than the %d-byte header", len(b), stunHeaderSize)
	}
	if b[0]&0xC0 != 0 {
		return id, netip.AddrPort{}, errors.New("not a STUN message: the two leading bits of the type are not zero")
	}
	if cookie := binary.BigEndian.Uint32(b[4:8]); cookie != magicCookie {
		return id, netip.AddrPort{}, fmt.Errorf("not a STUN message: magic cookie is %#08x, want %#08x", cookie, magicCookie)
	}
	if n := int(binary.BigEndian.Uint16(b[2:4])); n%4 != 0 || stunHeaderSize+n != len(b) {
		return id, netip.AddrPort{}, fmt.Errorf("STUN header announces %d bytes of attributes, but the datagram carries %d", n, len(b)-stunHeaderSize)
	}
	copy(id[:], b[8:stunHeaderSize])

	m := new(stun.Message)
	if err := stun.Decode(b, m); err != nil {
		return id, netip.AddrPort{}, fmt.Errorf("malformed STUN message: %w", err)
	}
	if m.Contains(stun.AttrFingerprint) {
		// RFC 5389 §15.5: FINGERPRINT is the last attribute and covers all
		// of the message before it.
		if last := m.Attributes[len(m.Attributes)-1]; last.Type != stun.AttrFingerprint {
			return id, netip.AddrPort{}, errors.New("STUN message has a FINGERPRINT attribute that is not the last one")
		}
		if err := stun.Fingerprint.Check(m); err != nil {
			return id, netip.AddrPort{}, fmt.Errorf("STUN message fails its FINGERPRINT check: %w", err)
		}
	}
	if m.Type.Method != stun.MethodBinding {
		return id, netip.AddrPort{}, fmt.Errorf("STUN message is a %s, not a Binding response", m.Type)
	}
	switch m.Type.Class {
	case stun.ClassSuccessResponse:
	case stun.ClassErrorResponse:
		return id, netip.AddrPort{}, decodeErrorCode(m)
	default:
		return id, netip.AddrPort{}, fmt.Errorf("STUN message is a Binding %s, not a response", m.Type.Class)
	}

	if v, err := m.Get(stun.AttrXORMappedAddress); err == nil {
		ap, err := decodeAddress(v, true, id)
		if err != nil {
			return id, netip.AddrPort{}, fmt.Errorf("STUN XOR-MAPPED-ADDRESS: %w", err)
		}
		return id, ap, nil
	}
	if v, err := m.Get(stun.AttrMappedAddress); err == nil {
		ap, err := decodeAddress(v, false, id)
		if err != nil {
			return id, netip.AddrPort{}, fmt.Errorf("STUN MAPPED-ADDRESS: %w", err)
		}
		return id, ap, nil
	}
	return id, netip.AddrPort{}, errors.New("STUN Binding response has neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS")
}

// decodeErrorCode returns the *ErrorResponse an error response carries
// (RFC 5389 §15.6: class 3..6, number 0..99), or why it carries none.
func decodeErrorCode(m *stun.Message) error {
	v, err := m.Get(stun.AttrErrorCode)
	if err != nil || len(v) < 4 {
		return errors.New("STUN Binding error response without a valid ERROR-CODE")
	}
	class, number := int(v[2]&7), int(v[3])
	if class < 3 || class > 6 || number > 99 {
		return fmt.Errorf("STUN Binding error response with an invalid ERROR-CODE (class %d, number %d)", class, number)
	}
	return &ErrorResponse{Code: class*100 + number, Reason: string(v[4:])}
}

// decodeAddress decodes the value of a (XOR-)MAPPED-ADDRESS attribute
// (RFC 5389 §15.1, §15.2). Its length must match the family exactly: a
// short value would otherwise decode to an address padded with zeros.
func decodeAddress(v []byte, xored bool, id TransactionID) (netip.AddrPort, error) {
	if len(v) < 4 {
		return netip.AddrPort{}, fmt.Errorf("value of %d bytes is too short", len(v))
	}
	port := binary.BigEndian.Uint16(v[2:4])
	var key [16]byte // what the address is XOR-ed with
	if xored {
		port ^= magicCookie >> 16
		binary.BigEndian.PutUint32(key[:4], magicCookie)
		copy(key[4:], id[:])
	}
	var addr netip.Addr
	switch family := v[1]; family {
	case familyIPv4:
		if len(v) != 4+4 {
			return netip.AddrPort{}, fmt.Errorf("IPv4 value is %d bytes, want 8", len(v))
		}
		var a [4]byte
		for i := range a {
			a[i] = v[4+i] ^ key[i]
		}
		addr = netip.AddrFrom4(a)
	case familyIPv6:
		if len(v) != 4+16 {
			return netip.AddrPort{}, fmt.Errorf("IPv6 value is %d bytes, want 20", len(v))
		}
		var a [16]byte
		for i := range a {
			a[i] = v[4+i] ^ key[i]
		}
		addr = netip.AddrFrom16(a).Unmap()
	default:
		return netip.AddrPort{}, fmt.Errorf("unknown address family %#02x", family)
	}
	if addr.IsUnspecified() || port == 0 {
		return netip.AddrPort{}, fmt.Errorf("reports %s, which is not a usable address", netip.AddrPortFrom(addr, port))
	}
	return netip.AddrPortFrom(addr, port), nil
}
