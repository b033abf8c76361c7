package nat

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

type fakeResolver map[string][]netip.Addr

func (r fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if ips, ok := r[host]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func TestResolveServers(t *testing.T) {
	saved := serverResolver
	t.Cleanup(func() { serverResolver = saved })
	serverResolver = fakeResolver{
		"stun.example":   {netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.1")},
		"v6only.example": {netip.MustParseAddr("2001:db8::2")},
		"mapped.example": {netip.MustParseAddr("::ffff:192.0.2.3")},
		"empty.example":  {},
	}
	ap := netip.MustParseAddrPort
	cases := []struct {
		in      string
		want    netip.AddrPort
		wantErr string
	}{
		{"stun.example:19302", ap("192.0.2.1:19302"), ""},
		{"stun.example", ap("192.0.2.1:3478"), ""},
		{" stun.example ", ap("192.0.2.1:3478"), ""},
		{"v6only.example", ap("[2001:db8::2]:3478"), ""},
		{"mapped.example:1", ap("192.0.2.3:1"), ""},
		{"192.0.2.9", ap("192.0.2.9:3478"), ""},
		{"192.0.2.9:5000", ap("192.0.2.9:5000"), ""},
		{"2001:db8::9", ap("[2001:db8::9]:3478"), ""},
		{"[2001:db8::9]", ap("[2001:db8::9]:3478"), ""},
		{"[2001:db8::9]:5000", ap("[2001:db8::9]:5000"), ""},
		{"", netip.AddrPort{}, "empty server name"},
		{"stun.example:0", netip.AddrPort{}, "port \"0\""},
		{"stun.example:65536", netip.AddrPort{}, "port \"65536\""},
		{"stun.example:stun", netip.AddrPort{}, "port \"stun\""},
		{":3478", netip.AddrPort{}, "missing host"},
		{"a:b:c", netip.AddrPort{}, "not host:port"},
		{"nowhere.example", netip.AddrPort{}, "no such host"},
		{"empty.example", netip.AddrPort{}, "has no addresses"},
		{"fe80::1%eth0", netip.AddrPort{}, "link-local"},
	}
	for _, c := range cases {
		got, err := ResolveServers(t.Context(), []string{c.in})
		if c.wantErr == "" {
			if err != nil || len(got) != 1 || got[0] != c.want {
				t.Errorf("ResolveServers(%q) = %v, %v; want %v", c.in, got, err, c.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), `"`+c.in+`"`) {
			t.Errorf("ResolveServers(%q) = %v, %v; want an error naming the entry and containing %q", c.in, got, err, c.wantErr)
		}
	}

	// Several: failures are reported, the rest come back in order, once.
	got, err := ResolveServers(t.Context(), []string{"stun.example", "nowhere.example", "192.0.2.9", "stun.example:3478"})
	if want := []netip.AddrPort{ap("192.0.2.1:3478"), ap("192.0.2.9:3478")}; !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
	if err == nil || !strings.Contains(err.Error(), "nowhere.example") || strings.Contains(err.Error(), `"stun.example"`) {
		t.Errorf("error %v, want one naming only nowhere.example", err)
	}
	if _, err := ResolveServers(t.Context(), nil); err == nil {
		t.Error("no servers: no error")
	}
}
