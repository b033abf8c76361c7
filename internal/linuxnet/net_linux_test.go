package linuxnet

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
)

func readSysfs(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func checkBridge(t *testing.T, name, gw string, mtu int) {
	t.Helper()
	l := ipLinkOf(t, "", name)
	if l.LinkInfo.Kind != "bridge" {
		t.Errorf("%s is a %q, want a bridge", name, l.LinkInfo.Kind)
	}
	if l.MTU != mtu {
		t.Errorf("%s MTU = %d, want %d", name, l.MTU, mtu)
	}
	if !l.up() {
		t.Errorf("%s is not up (flags %v)", name, l.Flags)
	}
	if got := l.globalAddrs(); !slices.Equal(got, []string{gw}) {
		t.Errorf("%s global addresses = %v, want exactly [%s]", name, got, gw)
	}
	if stp := readSysfs(t, "/sys/class/net/"+name+"/bridge/stp_state"); stp != "0" {
		t.Errorf("%s stp_state = %s, want 0", name, stp)
	}
}

func TestEnsureBridge(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	id := testID(t)
	br, member, peer := "zltl"+id+"b", "zltl"+id+"m", "zltl"+id+"p"
	spec := BridgeSpec{Name: br, Gateway: netip.MustParsePrefix("10.200.3.17/28"), MTU: 1400}

	for range 2 {
		if err := n.EnsureBridge(spec); err != nil {
			t.Fatal(err)
		}
		checkBridge(t, br, "10.200.3.17/28", 1400)
	}

	// A live bridge with a port, disturbed in every way EnsureBridge corrects. The
	// reference implementation deleted such a bridge when its gateway address existed.
	mustRun(t, "ip", "link", "add", member, "type", "veth", "peer", "name", peer)
	mustRun(t, "ip", "link", "set", member, "master", br)
	mustRun(t, "ip", "link", "set", br, "type", "bridge", "stp_state", "1")
	mustRun(t, "ip", "link", "set", br, "mtu", "1300")
	mustRun(t, "ip", "addr", "add", "10.99.0.1/24", "dev", br)
	mustRun(t, "ip", "link", "set", br, "down")
	if err := n.EnsureBridge(spec); err != nil {
		t.Fatal(err)
	}
	checkBridge(t, br, "10.200.3.17/28", 1400)
	if m := ipLinkOf(t, "", member).Master; m != br {
		t.Errorf("after re-ensuring, %s has master %q, want it still a port of %s", member, m, br)
	}

	// A new gateway replaces the old one.
	spec.Gateway = netip.MustParsePrefix("10.200.3.33/28")
	if err := n.EnsureBridge(spec); err != nil {
		t.Fatal(err)
	}
	checkBridge(t, br, "10.200.3.33/28", 1400)

	// A link of that name that is not a bridge is refused and left alone.
	err := n.EnsureBridge(BridgeSpec{Name: member, Gateway: netip.MustParsePrefix("10.200.4.1/24")})
	if err == nil || !strings.Contains(err.Error(), "veth") {
		t.Fatalf("EnsureBridge over a veth: err = %v, want a refusal naming the veth", err)
	}
	if l := ipLinkOf(t, "", member); l.LinkInfo.Kind != "veth" || len(l.globalAddrs()) != 0 {
		t.Errorf("the refused veth was modified: %+v", l)
	}

	// IPv6 gateway on a second bridge: present immediately (no DAD hold).
	br6 := "zltl" + id + "6"
	if err := n.EnsureBridge(BridgeSpec{Name: br6, Gateway: netip.MustParsePrefix("fd00:200::1/64"), MTU: 1420}); err != nil {
		t.Fatal(err)
	}
	checkBridge(t, br6, "fd00:200::1/64", 1420)
}

func TestLinksAddrsRoutes(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	id := testID(t)
	br, a, z := "zltl"+id+"b", "zltl"+id+"a", "zltl"+id+"z"
	if err := n.EnsureBridge(BridgeSpec{Name: br, Gateway: netip.MustParsePrefix("10.8.0.1/24")}); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "ip", "link", "add", a, "type", "veth", "peer", "name", z)
	mustRun(t, "ip", "link", "set", z, "master", br)
	mustRun(t, "ip", "link", "set", z, "up") // carrier for a, so it gets an IPv6 link-local address

	for _, name := range []string{a, br} {
		if ok, err := n.LinkExists(name); err != nil || !ok {
			t.Errorf("LinkExists(%s) = %v, %v", name, ok, err)
		}
	}
	if ok, err := n.LinkExists("zltl" + id + "q"); err != nil || ok {
		t.Errorf("LinkExists(missing) = %v, %v", ok, err)
	}

	if err := n.SetUp(a); err != nil {
		t.Fatal(err)
	}
	if err := n.SetMTU(a, 1280); err != nil {
		t.Fatal(err)
	}
	links, err := n.Links("zltl" + id)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]LinkInfo{}
	for _, l := range links {
		got[l.Name] = l
	}
	if len(got) != 3 {
		t.Errorf("Links(prefix) = %+v, want exactly %s, %s, %s", links, br, a, z)
	}
	if l := got[br]; l.Kind != "bridge" || !l.Up || l.Master != "" {
		t.Errorf("bridge info = %+v", l)
	}
	if l := got[a]; l.Kind != "veth" || !l.Up || l.MTU != 1280 || l.Index != ipLinkOf(t, "", a).Index {
		t.Errorf("veth %s info = %+v", a, l)
	}
	if l := got[z]; l.Kind != "veth" || !l.Up || l.Master != br || l.PeerNetnsID != -1 {
		t.Errorf("veth %s info = %+v (peer is in the same namespace, so PeerNetnsID should be -1)", z, l)
	}
	if none, err := n.Links("zltl-nothing-"); err != nil || len(none) != 0 {
		t.Errorf("Links(unused prefix) = %v, %v", none, err)
	}

	// Addresses: exactly the wanted ones per family; other families and link-local stay.
	pfx := netip.MustParsePrefix
	mustAddrs := func(want ...string) {
		t.Helper()
		got := ipLinkOf(t, "", a).globalAddrs()
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("addresses of %s = %v, want %v", a, got, want)
		}
	}
	if err := n.EnsureAddrs(a, []netip.Prefix{pfx("10.9.0.1/24"), pfx("10.9.1.1/24")}); err != nil {
		t.Fatal(err)
	}
	mustAddrs("10.9.0.1/24", "10.9.1.1/24")
	for range 2 {
		if err := n.EnsureAddrs(a, []netip.Prefix{pfx("10.9.1.1/24")}); err != nil {
			t.Fatal(err)
		}
		mustAddrs("10.9.1.1/24")
	}
	if err := n.EnsureAddrs(a, []netip.Prefix{pfx("fd00:9::1/64")}); err != nil {
		t.Fatal(err)
	}
	mustAddrs("10.9.1.1/24", "fd00:9::1/64")
	if err := n.EnsureAddrs(a, []netip.Prefix{pfx("fd00:9::2/64")}); err != nil {
		t.Fatal(err)
	}
	mustAddrs("10.9.1.1/24", "fd00:9::2/64")
	hasLinkLocal := slices.ContainsFunc(ipLinkOf(t, "", a).AddrInfo, func(x struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
	}) bool {
		return x.Scope == "link"
	})
	if !hasLinkLocal {
		t.Errorf("the IPv6 link-local address of %s was removed", a)
	}
	// Removing a stale IPv4 primary also removes the secondaries of its subnet; the wanted
	// secondary must be back afterwards.
	if err := SetSysctl("net/ipv4/conf/"+a+"/promote_secondaries", "0"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "ip", "addr", "add", "10.9.2.5/24", "dev", a)
	mustRun(t, "ip", "addr", "add", "10.9.2.1/24", "dev", a)
	if err := n.EnsureAddrs(a, []netip.Prefix{pfx("10.9.1.1/24"), pfx("10.9.2.1/24")}); err != nil {
		t.Fatal(err)
	}
	mustAddrs("10.9.1.1/24", "10.9.2.1/24", "fd00:9::2/64")

	// Routes.
	viaRoute := Route{Dst: pfx("10.50.0.0/16"), Dev: a, Via: netip.MustParseAddr("10.9.1.254")}
	hostRoute := Route{Dst: pfx("10.60.0.7/32"), Dev: a, Src: netip.MustParseAddr("10.9.1.1")}
	onlink := Route{Dst: pfx("10.70.0.0/16"), Dev: a, Via: netip.MustParseAddr("192.168.77.1"), OnLink: true}
	v6 := Route{Dst: pfx("fd00:60::/48"), Dev: a, Via: netip.MustParseAddr("fd00:9::fe")}
	for range 2 {
		for _, r := range []Route{viaRoute, hostRoute, onlink, v6} {
			if err := n.EnsureRoute(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	var seen []string
	for _, r := range ipRoutes(t, "", "-4") {
		if r.Dev == a && r.Dst != "10.9.1.0/24" && r.Dst != "10.9.2.0/24" {
			seen = append(seen, r.Dst+" via "+r.Gateway+" scope "+r.Scope+" src "+r.PrefSrc+" "+strings.Join(r.Flags, ","))
		}
	}
	slices.Sort(seen)
	wantSeen := []string{
		"10.50.0.0/16 via 10.9.1.254 scope global src  ",
		"10.60.0.7 via  scope link src 10.9.1.1 ",
		"10.70.0.0/16 via 192.168.77.1 scope global src  onlink",
	}
	if !slices.Equal(seen, wantSeen) {
		t.Errorf("IPv4 routes on %s (ip route) =\n%q\nwant\n%q", a, seen, wantSeen)
	}

	routes, err := n.Routes(a)
	if err != nil {
		t.Fatal(err)
	}
	wantRoutes := []Route{
		{Dst: pfx("10.50.0.0/16"), Dev: a, Via: netip.MustParseAddr("10.9.1.254"), Scope: ScopeUniverse},
		{Dst: pfx("10.60.0.7/32"), Dev: a, Src: netip.MustParseAddr("10.9.1.1"), Scope: ScopeLink},
		{Dst: pfx("10.70.0.0/16"), Dev: a, Via: netip.MustParseAddr("192.168.77.1"), Scope: ScopeUniverse, OnLink: true},
		{Dst: pfx("fd00:60::/48"), Dev: a, Via: netip.MustParseAddr("fd00:9::fe"), Scope: ScopeUniverse},
	}
	for _, w := range wantRoutes {
		if !slices.Contains(routes, w) {
			t.Errorf("Routes(%s) = %v, missing %v", a, routes, w)
		}
	}
	for _, r := range routes {
		if r.Dst == pfx("10.9.1.0/24") || r.Dst.Addr().IsLinkLocalUnicast() {
			t.Errorf("Routes(%s) includes the kernel's own route %v", a, r)
		}
	}

	// Deleting a link-scope route with ScopeAuto must match it (the kernel matches on scope).
	for range 2 {
		if err := n.DeleteRoute(hostRoute); err != nil {
			t.Fatal(err)
		}
		if err := n.DeleteRoute(v6); err != nil {
			t.Fatal(err)
		}
	}
	if routes, _ := n.Routes(a); slices.ContainsFunc(routes, func(r Route) bool { return r.Dst == hostRoute.Dst || r.Dst == v6.Dst }) {
		t.Errorf("routes left after DeleteRoute: %v", routes)
	}
	if err := n.DeleteRoute(Route{Dst: pfx("10.1.0.0/16"), Dev: "zltl" + id + "q"}); err != nil {
		t.Errorf("DeleteRoute on a missing device: %v", err)
	}
	if err := n.EnsureRoute(Route{Dst: pfx("10.1.0.0/16"), Dev: a, Via: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Error("EnsureRoute accepted a gateway of the wrong family")
	}

	// DeleteLink removes the pair; a second delete is a no-op.
	for range 2 {
		if err := n.DeleteLink(a); err != nil {
			t.Fatal(err)
		}
	}
	if l := ipLinks(t, ""); l[a].Name != "" || l[z].Name != "" {
		t.Errorf("veth pair still present after DeleteLink")
	}
}
