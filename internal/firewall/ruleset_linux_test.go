package firewall

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestIntervalElementsFollowNft(t *testing.T) {
	r := func(a, b string) addrRange { return addrRange{netip.MustParseAddr(a), netip.MustParseAddr(b)} }
	for _, tc := range []struct {
		ranges []addrRange
		size   int
		want   string
	}{
		{nil, 4, ""},
		// nft's layout: a leading interval end at zero, then start/end pairs.
		{[]addrRange{r("10.1.0.0", "10.1.255.255"), r("10.3.0.0", "10.3.0.255")}, 4,
			"00000000/end 0a010000 0a020000/end 0a030000 0a030100/end"},
		// A range from zero needs no leading end; one reaching the top has no end.
		{[]addrRange{r("0.0.0.0", "255.255.255.255")}, 4, "00000000"},
		{[]addrRange{r("fd00::", "fd00::ffff:ffff:ffff:ffff")}, 16,
			"00000000000000000000000000000000/end fd000000000000000000000000000000 fd000000000000010000000000000000/end"},
	} {
		var got []string
		for _, e := range intervalElements(tc.ranges, tc.size) {
			s := fmt.Sprintf("%x", e.Key)
			if e.IntervalEnd {
				s += "/end"
			}
			got = append(got, s)
		}
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("intervalElements(%v) = %q, want %q", tc.ranges, s, tc.want)
		}
	}
}

func TestIfnameElementsArePadded(t *testing.T) {
	els := ifnameElements([]string{"zl-overlay0"})
	if len(els) != 1 || fmt.Sprintf("%q", els[0].Key) != `"zl-overlay0\x00\x00\x00\x00\x00"` {
		t.Fatalf("ifnameElements = %+v", els)
	}
}

// TestUnprivilegedErrorNamesCapability checks that an ordinary user gets
// an error that says what is missing. Only reads are attempted.
func TestUnprivilegedErrorNamesCapability(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs only as an unprivileged user, where nftables refuses netlink requests")
	}
	for name, call := range map[string]func() error{
		"Inspect":       func() error { _, err := Inspect(""); return err },
		"Drifted":       func() error { _, err := Drifted(Spec{}); return err },
		"DetectForeign": func() error { _, err := DetectForeign(); return err },
	} {
		err := call()
		if err == nil || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
			t.Errorf("%s as uid %d: error %v, want one naming CAP_NET_ADMIN", name, os.Geteuid(), err)
		}
	}
}

func TestApplyRejectsInvalidSpecBeforeTouchingTheKernel(t *testing.T) {
	// Valid for any user: validation fails before a socket is opened.
	err := Apply(Spec{Bridges: []string{"this-name-is-far-too-long"}})
	if err == nil || !strings.Contains(err.Error(), "at most 15") {
		t.Fatalf("Apply with a 25-byte bridge name: %v", err)
	}
	if err := Delete("bad name"); err == nil {
		t.Fatal("Delete accepted a table name with a space")
	}
}
