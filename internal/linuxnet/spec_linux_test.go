package linuxnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAttachSpecCheck(t *testing.T) {
	good := AttachSpec{
		PID: 1, HostName: "zl-v4242-e0", IfName: "eth0", Addr: netip.MustParsePrefix("10.200.3.18/28"),
		MTU: 1400, Bridge: "zl-dep-web-b", Gateway: netip.MustParseAddr("10.200.3.17"),
	}
	if err := good.check(); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	routed := AttachSpec{
		PID: 1, HostName: "zl-v4242-e1", IfName: "eth1", Addr: netip.MustParsePrefix("10.201.0.5/32"),
		HostRoute: true, HostRouteSrc: netip.MustParseAddr("10.201.0.1"),
		Routes: []ContainerRoute{{Dst: netip.MustParsePrefix("10.201.0.0/16"), Via: netip.MustParseAddr("10.201.0.1"), OnLink: true}},
	}
	if err := routed.check(); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	for name, tc := range map[string]struct {
		base   AttachSpec
		mutate func(*AttachSpec)
		want   string
	}{
		"no pid":            {good, func(s *AttachSpec) { s.PID = 0 }, "neither a PID"},
		"host name long":    {good, func(s *AttachSpec) { s.HostName = "zl-0123456789abc" }, "at most 15"},
		"host name slash":   {good, func(s *AttachSpec) { s.HostName = "zl/x" }, "'/'"},
		"if name empty":     {good, func(s *AttachSpec) { s.IfName = "" }, "empty"},
		"no address":        {good, func(s *AttachSpec) { s.Addr = netip.Prefix{} }, "address"},
		"mapped address":    {good, func(s *AttachSpec) { s.Addr = netip.MustParsePrefix("::ffff:10.0.0.1/128") }, "IPv4-mapped"},
		"negative mtu":      {good, func(s *AttachSpec) { s.MTU = -1 }, "negative"},
		"bridge+route":      {good, func(s *AttachSpec) { s.HostRoute = true }, "mutually exclusive"},
		"gateway family":    {good, func(s *AttachSpec) { s.Gateway = netip.MustParseAddr("fd00::1") }, "families"},
		"src without route": {good, func(s *AttachSpec) { s.HostRouteSrc = netip.MustParseAddr("10.0.0.1") }, "HostRoute is not"},
		"src family":        {routed, func(s *AttachSpec) { s.HostRouteSrc = netip.MustParseAddr("fd00::1") }, "families"},
		"route family":      {routed, func(s *AttachSpec) { s.Routes[0].Dst = netip.MustParsePrefix("fd00::/64") }, "address family"},
	} {
		s := tc.base
		s.Routes = append([]ContainerRoute(nil), tc.base.Routes...)
		tc.mutate(&s)
		err := s.check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one mentioning %q", name, err, tc.want)
		}
	}
}

func TestRouteString(t *testing.T) {
	r := Route{Dst: netip.MustParsePrefix("10.201.0.5/32"), Dev: "zl-v1-e1", Src: netip.MustParseAddr("10.201.0.1"), Scope: ScopeLink}
	if got, want := r.String(), "10.201.0.5/32 dev zl-v1-e1 scope link src 10.201.0.1"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	r = Route{Dst: netip.MustParsePrefix("10.0.0.0/8"), Dev: "eth1", Via: netip.MustParseAddr("10.201.0.1"), OnLink: true}
	if got, want := r.String(), "10.0.0.0/8 via 10.201.0.1 dev eth1 onlink"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
