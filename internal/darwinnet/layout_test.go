package darwinnet

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"unsafe"
)

// The request numbers macOS's headers define (x/sys/unix's
// zerrors_darwin_*.go for the IPv4 ones; <netinet6/in6_var.h> for the
// IPv6 ones, which embed sizeof(struct in6_aliasreq) = 128 and
// sizeof(struct in6_ifreq) = 288).
func TestRequestNumbersMatchDarwin(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uint
		want uint
	}{
		{"SIOCSIFFLAGS", siocSIFFLAGS, 0x80206910},
		{"SIOCGIFFLAGS", siocGIFFLAGS, 0xc0206911},
		{"SIOCDIFADDR", siocDIFADDR, 0x80206919},
		{"SIOCAIFADDR", siocAIFADDR, 0x8040691a},
		{"SIOCDIFADDR_IN6", siocDIFADDRIn6, 0x81206919},
		{"SIOCAIFADDR_IN6", siocAIFADDRIn6, 0x8080691a},
		{"SIOCSIFMTU", siocSIFMTU, 0x80206934},
		{"SIOCGIFMTU", siocGIFMTU, 0xc0206933},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// Go mirrors of the C structs, laid out by the compiler under the same
// LP64 rules as clang on macOS: they check the hand-computed offsets.
type cSockaddrIn6 struct {
	Len, Family uint8
	Port        uint16
	Flowinfo    uint32
	Addr        [16]byte
	ScopeID     uint32
}

type cIn6Aliasreq struct {
	Name       [16]byte
	Addr       cSockaddrIn6
	DstAddr    cSockaddrIn6
	PrefixMask cSockaddrIn6
	Flags      int32
	Lifetime   struct {
		Expire, Preferred int64
		Vltime, Pltime    uint32
	}
}

func TestMirrorLayouts(t *testing.T) {
	var r cIn6Aliasreq
	if s := unsafe.Sizeof(r); s != sizeofIn6Aliasreq {
		t.Errorf("sizeof(in6_aliasreq) = %d, want %d", s, sizeofIn6Aliasreq)
	}
	if s := unsafe.Sizeof(r.Addr); s != sizeofSockaddrIn6 {
		t.Errorf("sizeof(sockaddr_in6) = %d", s)
	}
	for _, c := range []struct {
		field string
		got   uintptr
		want  uintptr
	}{
		{"ifra_addr", unsafe.Offsetof(r.Addr), 16},
		{"ifra_dstaddr", unsafe.Offsetof(r.DstAddr), 44},
		{"ifra_prefixmask", unsafe.Offsetof(r.PrefixMask), 72},
		{"ifra_flags", unsafe.Offsetof(r.Flags), 100},
		{"ifra_lifetime", unsafe.Offsetof(r.Lifetime), 104},
		{"ia6t_vltime", unsafe.Offsetof(r.Lifetime) + unsafe.Offsetof(r.Lifetime.Vltime), 120},
		{"ia6t_pltime", unsafe.Offsetof(r.Lifetime) + unsafe.Offsetof(r.Lifetime.Pltime), 124},
	} {
		if c.got != c.want {
			t.Errorf("offsetof(%s) = %d, want %d", c.field, c.got, c.want)
		}
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIfaliasreq4(t *testing.T) {
	got, err := ifaliasreq4("utun3", netip.MustParsePrefix("10.200.0.1/16"))
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, `
		7574756e33000000 0000000000000000
		1002 0000 0ac80001 0000000000000000
		1002 0000 0ac80001 0000000000000000
		1002 0000 ffff0000 0000000000000000`)
	if !bytes.Equal(got[:], want) {
		t.Errorf("ifaliasreq4:\n got %x\nwant %x", got, want)
	}
}

func TestIfreqAddr4AndFlags(t *testing.T) {
	got, err := ifreqAddr4("utun10", netip.MustParseAddr("192.0.2.7"))
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, `7574756e31300000 0000000000000000 1002 0000 c0000207 0000000000000000`)
	if !bytes.Equal(got[:], want) {
		t.Errorf("ifreqAddr4:\n got %x\nwant %x", got, want)
	}
	fl, err := ifreqFlags("utun3", 0x8051)
	if err != nil {
		t.Fatal(err)
	}
	if fl[16] != 0x51 || fl[17] != 0x80 || ifreqFlagsOf(fl) != 0x8051 || !bytes.Equal(fl[18:], make([]byte, 14)) {
		t.Errorf("ifreqFlags: %x", fl)
	}
}

func TestIn6Aliasreq(t *testing.T) {
	got, err := in6Aliasreq("utun4", netip.MustParsePrefix("fd00:200::1/64"))
	if err != nil {
		t.Fatal(err)
	}
	var want [sizeofIn6Aliasreq]byte
	copy(want[:], "utun4")
	copy(want[16:], unhex(t, `1c 1e 0000 00000000 fd000200000000000000000000000001 00000000`))
	copy(want[72:], unhex(t, `1c 1e 0000 00000000 ffffffffffffffff0000000000000000 00000000`))
	copy(want[120:], unhex(t, `ffffffff ffffffff`))
	if got != want {
		t.Errorf("in6Aliasreq:\n got %x\nwant %x", got, want)
	}
}

func TestIn6Ifreq(t *testing.T) {
	got, err := in6Ifreq("utun4", netip.MustParseAddr("fd00:200::1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 288 || string(got[:5]) != "utun4" || got[16] != 28 || got[17] != 30 ||
		netip.AddrFrom16([16]byte(got[24:40])) != netip.MustParseAddr("fd00:200::1") ||
		!bytes.Equal(got[44:], make([]byte, 288-44)) {
		t.Errorf("in6Ifreq: %x", got)
	}
}

func TestRequestsRefuseBadInput(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("fd00::1/64")
	for name, err := range map[string]error{
		"empty name":     func() error { _, err := ifaliasreq4("", v4); return err }(),
		"16-byte name":   func() error { _, err := ifaliasreq4("utun012345678901", v4); return err }(),
		"v6 into v4 req": func() error { _, err := ifaliasreq4("utun1", v6); return err }(),
		"v4 into v6 req": func() error { _, err := in6Aliasreq("utun1", v4); return err }(),
		"mapped into v6": func() error { _, err := in6Ifreq("utun1", netip.MustParseAddr("::ffff:10.0.0.1")); return err }(),
		"v6 delete as v4": func() error {
			_, err := ifreqAddr4("utun1", v6.Addr())
			return err
		}(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestMask(t *testing.T) {
	for _, c := range []struct {
		bits, bitLen int
		want         string
	}{
		{0, 32, "0.0.0.0"}, {16, 32, "255.255.0.0"}, {28, 32, "255.255.255.240"}, {32, 32, "255.255.255.255"},
		{64, 128, "ffff:ffff:ffff:ffff::"}, {120, 128, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00"},
	} {
		if got := mask(c.bits, c.bitLen); got != netip.MustParseAddr(c.want) {
			t.Errorf("mask(%d, %d) = %s, want %s", c.bits, c.bitLen, got, c.want)
		}
	}
}
