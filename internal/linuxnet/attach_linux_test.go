package linuxnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
)

func setupBridge(t *testing.T, n *Net, gw string, mtu int) string {
	t.Helper()
	br := "zltl" + testID(t) + "b"
	if err := n.EnsureBridge(BridgeSpec{Name: br, Gateway: netip.MustParsePrefix(gw), MTU: mtu}); err != nil {
		t.Fatal(err)
	}
	return br
}

func bridgedSpec(t *testing.T, c *container, host, br, addr, gw string) AttachSpec {
	return AttachSpec{
		PID:      c.pid,
		HostName: "zltl" + testID(t) + host,
		IfName:   "eth0",
		Addr:     netip.MustParsePrefix(addr),
		MTU:      1400,
		Bridge:   br,
		Gateway:  netip.MustParseAddr(gw),
	}
}

// attachTwo attaches two new containers, with addresses a1 and a2, to a
// new bridge whose gateway is gw, everything at that MTU.
func attachTwo(t *testing.T, gw string, mtu int, a1, a2 string) ([2]*container, [2]AttachSpec) {
	t.Helper()
	n := newTestNet(t)
	br := setupBridge(t, n, gw, mtu)
	via := netip.MustParsePrefix(gw).Addr().String()
	var c [2]*container
	var s [2]AttachSpec
	for i, addr := range []string{a1, a2} {
		c[i] = newContainer(t, fmt.Sprintf("c%d", i+1))
		s[i] = bridgedSpec(t, c[i], fmt.Sprintf("h%d", i+1), br, addr, via)
		s[i].MTU = mtu
		if err := n.Attach(s[i]); err != nil {
			t.Fatal(err)
		}
	}
	return c, s
}

// checkContainerSide verifies, through iproute2, what Attach must leave in the container.
func checkContainerSide(t *testing.T, c *container, spec AttachSpec) {
	t.Helper()
	links := ipLinks(t, c.ns)
	eth, ok := links[spec.IfName]
	if !ok {
		t.Fatalf("container %s has no %s; links: %v", c.ns, spec.IfName, links)
	}
	if eth.MTU != spec.MTU || !eth.up() || eth.LinkInfo.Kind != "veth" {
		t.Errorf("container %s: mtu %d up %v kind %q; want mtu %d, up, veth", spec.IfName, eth.MTU, eth.up(), eth.LinkInfo.Kind, spec.MTU)
	}
	if got := eth.globalAddrs(); !slices.Equal(got, []string{spec.Addr.String()}) {
		t.Errorf("container %s addresses = %v, want [%s]", spec.IfName, got, spec.Addr)
	}
	if !links["lo"].up() {
		t.Errorf("container lo is not up")
	}
	host := ipLinkOf(t, "", spec.HostName)
	if host.MTU != spec.MTU || !host.up() || host.Master != spec.Bridge {
		t.Errorf("host end %s: mtu %d up %v master %q; want mtu %d, up, master %q", spec.HostName, host.MTU, host.up(), host.Master, spec.MTU, spec.Bridge)
	}
	// No IPv6 link-local address announcing itself to the whole bridge
	// where nobody talks IPv6 over the link: not on a bridge port, not in
	// a container without an IPv6 address.
	// (ip says no mode at all for a link without IPv6: MTU below 1280.)
	makesLL := func(mode string) bool { return mode != "none" && mode != "" }
	if mode := addrGenMode(t, "", spec.HostName); spec.Bridge != "" && makesLL(mode) {
		t.Errorf("host end %s, a bridge port, makes IPv6 link-local addresses (addrgenmode %q)", spec.HostName, mode)
	}
	if mode := addrGenMode(t, c.ns, spec.IfName); makesLL(mode) != (spec.hasIPv6() && spec.MTU >= 1280) {
		t.Errorf("container %s: addrgenmode %q with IPv6 addresses %v", spec.IfName, mode, spec.hasIPv6())
	}
	if spec.Gateway.IsValid() {
		family := "-4"
		if spec.Gateway.Is6() {
			family = "-6"
		}
		if !slices.ContainsFunc(ipRoutes(t, c.ns, family), func(r ipRoute) bool {
			return r.Dst == "default" && r.Gateway == spec.Gateway.String() && r.Dev == spec.IfName
		}) {
			t.Errorf("container has no default route via %s dev %s: %v", spec.Gateway, spec.IfName, ipRoutes(t, c.ns, family))
		}
	}
}

func TestAttachBridgeTwoContainers(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	br := setupBridge(t, n, "10.200.3.17/28", 1400)
	c1, c2 := newContainer(t, "c1"), newContainer(t, "c2")
	s1 := bridgedSpec(t, c1, "h1", br, "10.200.3.18/28", "10.200.3.17")
	s2 := bridgedSpec(t, c2, "h2", br, "10.200.3.19/28", "10.200.3.17")
	s2.PID, s2.NetnsPath = 0, "/run/netns/"+c2.ns // a pinned namespace instead of a pid
	s1.HostAlias = "zlayer-overlayd:veth:test"
	for _, s := range []AttachSpec{s1, s2} {
		if err := n.Attach(s); err != nil {
			t.Fatal(err)
		}
	}
	checkContainerSide(t, c1, s1)
	checkContainerSide(t, c2, s2)
	c1.mustPing(t, "10.200.3.19")
	c2.mustPing(t, "10.200.3.18")
	c1.mustPing(t, "10.200.3.17")

	links, err := n.Links(s1.HostName)
	if err != nil || len(links) != 1 || links[0].PeerNetnsID < 0 || links[0].Master != br || links[0].Alias != s1.HostAlias {
		t.Errorf("Links(%s) = %+v, %v; want one veth port of %s with a known peer namespace id and alias %q", s1.HostName, links, err, br, s1.HostAlias)
	}
	if err := n.SetAlias(s2.HostName, "relabelled"); err != nil {
		t.Fatal(err)
	}
	if links, err := n.Links(s2.HostName); err != nil || len(links) != 1 || links[0].Alias != "relabelled" {
		t.Errorf("after SetAlias: %+v, %v", links, err)
	}
	for _, tc := range []struct {
		pid    int
		ifName string
		addr   string
		want   bool
	}{
		{c1.pid, "eth0", "10.200.3.18/28", true},
		{c2.pid, "eth0", "10.200.3.19/28", true},
		{c1.pid, "eth0", "10.200.3.19/28", false},
		{c1.pid, "eth0", "10.200.3.18/32", false},
		{c1.pid, "eth1", "10.200.3.18/28", false},
	} {
		got, err := ContainerHasLink(tc.pid, tc.ifName, netip.MustParsePrefix(tc.addr))
		if err != nil || got != tc.want {
			t.Errorf("ContainerHasLink(%d, %s, %s) = %v, %v; want %v", tc.pid, tc.ifName, tc.addr, got, err, tc.want)
		}
	}
}

// Below IPv6's minimum MTU a link has no IPv6 at all, so there is no
// link-local address to turn off: the attach must not fail on it.
func TestAttachBelowIPv6MinimumMTU(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	c, s := attachTwo(t, "10.200.3.17/28", 1200, "10.200.3.18/28", "10.200.3.19/28")
	checkContainerSide(t, c[0], s[0])
	c[0].mustPing(t, "10.200.3.19")
}

func TestAttachIPv6(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	c, s := attachTwo(t, "fd00:200::1/64", 1420, "fd00:200::2/64", "fd00:200::3/64")
	checkContainerSide(t, c[0], s[0])
	checkContainerSide(t, c[1], s[1])
	c[0].mustPing(t, "fd00:200::3")
	c[1].mustPing(t, "fd00:200::1")
}

// Dual-stack: one address and one default route per family on one link,
// on a bridge carrying a gateway of each; the same spec again is a no-op,
// and a second address of the first's family is refused.
func TestAttachDualStack(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	br := "zltl" + testID(t) + "b"
	if err := n.EnsureBridge(BridgeSpec{Name: br, Gateway: netip.MustParsePrefix("10.200.3.1/28"), Extra: []netip.Prefix{netip.MustParsePrefix("fd00:200::1/64")}, MTU: 1420}); err != nil {
		t.Fatal(err)
	}
	c1, c2 := newContainer(t, "c1"), newContainer(t, "c2")
	specs := []AttachSpec{
		bridgedSpec(t, c1, "h1", br, "10.200.3.2/28", "10.200.3.1"),
		bridgedSpec(t, c2, "h2", br, "10.200.3.3/28", "10.200.3.1"),
	}
	for i, v6 := range []string{"fd00:200::2/64", "fd00:200::3/64"} {
		specs[i].Addr2, specs[i].Gateway2, specs[i].MTU = netip.MustParsePrefix(v6), netip.MustParseAddr("fd00:200::1"), 1420
		if err := n.Attach(specs[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []*container{c1, c2} {
		eth := ipLinks(t, c.ns)["eth0"]
		if got := eth.globalAddrs(); !slices.Contains(got, specs[i].Addr.String()) || !slices.Contains(got, specs[i].Addr2.String()) {
			t.Fatalf("container %d addresses %v", i, got)
		}
		if !slices.ContainsFunc(ipRoutes(t, c.ns, "-6"), func(r ipRoute) bool { return r.Dst == "default" && r.Gateway == "fd00:200::1" }) {
			t.Fatalf("container %d has no IPv6 default route: %v", i, ipRoutes(t, c.ns, "-6"))
		}
	}
	c1.mustPing(t, "10.200.3.3")
	c1.mustPing(t, "fd00:200::3")
	c2.mustPing(t, "fd00:200::1")
	before := ipLinkOf(t, "", specs[0].HostName).Index
	if err := n.Attach(specs[0]); err != nil {
		t.Fatal(err)
	}
	if ipLinkOf(t, "", specs[0].HostName).Index != before {
		t.Fatal("the same dual-stack spec again re-created the link")
	}
	bad := specs[0]
	bad.HostName, bad.Addr2 = "zltl"+testID(t)+"h3", netip.MustParsePrefix("10.200.3.9/28")
	if err := n.Attach(bad); err == nil || !strings.Contains(err.Error(), "other") {
		t.Fatalf("two IPv4 addresses: %v", err)
	}
}

// The eth1 style: no bridge, a /32 address, a host route to it and an onlink route in the
// container to the node address.
func TestAttachHostRoute(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	id := testID(t)
	// The node address lives on a port-less bridge (this kernel has no dummy links).
	node := "zltl" + id + "n"
	if err := n.EnsureBridge(BridgeSpec{Name: node, Gateway: netip.MustParsePrefix("10.201.0.1/32")}); err != nil {
		t.Fatal(err)
	}
	c := newContainer(t, "c1")
	spec := AttachSpec{
		PID:          c.pid,
		HostName:     "zltl" + id + "g",
		IfName:       "eth1",
		Addr:         netip.MustParsePrefix("10.201.5.7/32"),
		MTU:          1420,
		HostRoute:    true,
		HostRouteSrc: netip.MustParseAddr("10.201.0.1"),
		Routes: []ContainerRoute{{
			Dst: netip.MustParsePrefix("10.201.0.0/16"), Via: netip.MustParseAddr("10.201.0.1"), OnLink: true,
		}},
	}
	if err := n.Attach(spec); err != nil {
		t.Fatal(err)
	}
	checkContainerSide(t, c, spec)
	hostRoute := func() bool {
		return slices.ContainsFunc(ipRoutes(t, "", "-4"), func(r ipRoute) bool {
			return r.Dst == "10.201.5.7" && r.Dev == spec.HostName && r.Scope == "link" && r.PrefSrc == "10.201.0.1"
		})
	}
	if !hostRoute() {
		t.Errorf("no host route 10.201.5.7 dev %s scope link src 10.201.0.1: %v", spec.HostName, ipRoutes(t, "", "-4"))
	}
	if !slices.ContainsFunc(ipRoutes(t, c.ns, "-4"), func(r ipRoute) bool {
		return r.Dst == "10.201.0.0/16" && r.Gateway == "10.201.0.1" && slices.Contains(r.Flags, "onlink")
	}) {
		t.Errorf("container has no onlink route to 10.201.0.0/16: %v", ipRoutes(t, c.ns, "-4"))
	}
	if out, err := exec.Command("ping", "-c", "1", "-W", "5", "10.201.5.7").CombinedOutput(); err != nil {
		t.Errorf("host ping 10.201.5.7: %v\n%s", err, out)
	}
	c.mustPing(t, "10.201.0.1")

	if err := n.Detach(spec.HostName); err != nil {
		t.Fatal(err)
	}
	if hostRoute() {
		t.Error("host route left after Detach")
	}
	if _, ok := ipLinks(t, c.ns)["eth1"]; ok {
		t.Error("container eth1 left after Detach")
	}
}

func TestAttachIdempotent(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	br := setupBridge(t, n, "10.200.3.17/28", 1400)
	c := newContainer(t, "c1")
	spec := bridgedSpec(t, c, "h1", br, "10.200.3.18/28", "10.200.3.17")
	spec.Routes = []ContainerRoute{{Dst: netip.MustParsePrefix("10.210.0.0/16"), Via: netip.MustParseAddr("10.200.3.17")}}
	if err := n.Attach(spec); err != nil {
		t.Fatal(err)
	}
	hostIdx, ctrIdx := ipLinkOf(t, "", spec.HostName).Index, ipLinkOf(t, c.ns, "eth0").Index
	if err := n.Attach(spec); err != nil {
		t.Fatal(err)
	}
	if h, e := ipLinkOf(t, "", spec.HostName).Index, ipLinkOf(t, c.ns, "eth0").Index; h != hostIdx || e != ctrIdx {
		t.Errorf("second identical Attach rebuilt the pair (ifindex host %d->%d, container %d->%d)", hostIdx, h, ctrIdx, e)
	}
	checkContainerSide(t, c, spec)

	// Something drifted (the container lost a route): Attach rebuilds.
	if out, err := c.run("ip", "route", "del", "10.210.0.0/16"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := n.Attach(spec); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ipRoutes(t, c.ns, "-4"), func(r ipRoute) bool { return r.Dst == "10.210.0.0/16" }) {
		t.Error("Attach did not restore the missing container route")
	}

	// A different address for the same host end: rebuilt with only the new address.
	spec.Addr = netip.MustParsePrefix("10.200.3.20/28")
	if err := n.Attach(spec); err != nil {
		t.Fatal(err)
	}
	checkContainerSide(t, c, spec)
	c.mustPing(t, "10.200.3.17")

	// A host link of that name that is not a veth is never replaced.
	bad := spec
	bad.HostName = br
	if err := n.Attach(bad); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("Attach over a bridge's name: err = %v, want a refusal", err)
	}
	if ipLinkOf(t, "", br).LinkInfo.Kind != "bridge" {
		t.Error("the bridge was replaced")
	}
}

var errInjected = errors.New("injected failure")

// assertNothingLeft checks that no link and no route of spec remain in either namespace.
func assertNothingLeft(t *testing.T, c *container, spec AttachSpec, br string) {
	t.Helper()
	hostLinks := ipLinks(t, "")
	if _, ok := hostLinks[spec.HostName]; ok {
		t.Errorf("host end %s left behind", spec.HostName)
	}
	for name, l := range hostLinks {
		if br != "" && l.Master == br {
			t.Errorf("bridge %s still has port %s", br, name)
		}
	}
	for _, r := range append(ipRoutes(t, "", "-4"), ipRoutes(t, "", "-6")...) {
		if r.Dev == spec.HostName || strings.HasPrefix(r.Dst, spec.Addr.Addr().String()) {
			t.Errorf("host route left behind: %+v", r)
		}
	}
	ctrLinks := ipLinks(t, c.ns)
	if len(ctrLinks) != 1 || ctrLinks["lo"].Name != "lo" {
		t.Errorf("container links left behind: %v", ctrLinks)
	}
	if r := append(ipRoutes(t, c.ns, "-4"), ipRoutes(t, c.ns, "-6")...); len(r) != 0 {
		t.Errorf("container routes left behind: %+v", r)
	}
}

func TestAttachRollback(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	id := testID(t)
	br := setupBridge(t, n, "10.200.3.17/28", 1400)
	node := "zltl" + id + "n"
	if err := n.EnsureBridge(BridgeSpec{Name: node, Gateway: netip.MustParsePrefix("10.201.0.1/32")}); err != nil {
		t.Fatal(err)
	}
	c := newContainer(t, "c1")
	bridged := bridgedSpec(t, c, "h1", br, "10.200.3.18/28", "10.200.3.17")
	bridged.Routes = []ContainerRoute{{Dst: netip.MustParsePrefix("10.210.0.0/16"), Via: netip.MustParseAddr("10.200.3.17")}}
	bridged.HostAlias = "zlayer-overlayd:veth:rollback"
	routed := AttachSpec{
		PID: c.pid, HostName: "zltl" + id + "g", IfName: "eth1", Addr: netip.MustParsePrefix("10.201.5.7/32"),
		MTU: 1420, HostRoute: true, HostRouteSrc: netip.MustParseAddr("10.201.0.1"),
		Routes: []ContainerRoute{
			{Dst: netip.MustParsePrefix("10.201.0.0/16"), Via: netip.MustParseAddr("10.201.0.1"), OnLink: true},
			{Dst: netip.MustParsePrefix("10.202.0.0/16"), Via: netip.MustParseAddr("10.201.0.1"), OnLink: true},
		},
	}
	seen := map[string]bool{}
	for _, tc := range []struct {
		name   string
		spec   AttachSpec
		bridge string
	}{{"bridged", bridged, br}, {"host-route", routed, ""}} {
		// Record the steps of a successful attach, then fail at each of them in turn.
		var steps []string
		n.afterStep = func(step string) error { steps = append(steps, step); return nil }
		if err := n.Attach(tc.spec); err != nil {
			t.Fatal(err)
		}
		if err := n.Detach(tc.spec.HostName); err != nil {
			t.Fatal(err)
		}
		assertNothingLeft(t, c, tc.spec, tc.bridge)
		for failAt := range steps {
			t.Run(fmt.Sprintf("%s/%d-%s", tc.name, failAt, steps[failAt]), func(t *testing.T) {
				calls := 0
				n.afterStep = func(string) error {
					calls++
					if calls == failAt+1 {
						return errInjected
					}
					return nil
				}
				err := n.Attach(tc.spec)
				if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), steps[failAt]) {
					t.Fatalf("Attach with a failure at step %q: err = %v", steps[failAt], err)
				}
				seen[steps[failAt]] = true
				assertNothingLeft(t, c, tc.spec, tc.bridge)
			})
		}
	}
	n.afterStep = nil
	for _, step := range []string{stepCreateVeth, stepContainerAddr, stepContainerNoLinkLocal, stepContainerUp, stepContainerLo,
		stepContainerDefault, stepContainerRoute, stepHostAlias, stepHostMaster, stepHostNoLinkLocal, stepHostUp, stepHostRoute} {
		if !seen[step] {
			t.Errorf("no failure was injected at step %q", step)
		}
	}
	// Nothing left over blocks a real attach.
	if err := n.Attach(bridged); err != nil {
		t.Fatal(err)
	}
	checkContainerSide(t, c, bridged)
}

func TestAttachRealFailures(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	br := setupBridge(t, n, "10.200.3.17/28", 1400)

	t.Run("process exited", func(t *testing.T) {
		c := newContainer(t, "gone")
		spec := bridgedSpec(t, c, "h1", br, "10.200.3.18/28", "10.200.3.17")
		c.stop()
		err := n.Attach(spec)
		if err == nil || !strings.Contains(err.Error(), "has the process exited") {
			t.Fatalf("Attach to an exited process: err = %v", err)
		}
		if _, ok := ipLinks(t, "")[spec.HostName]; ok {
			t.Errorf("host end left behind")
		}
		if ok, err := ContainerHasLink(spec.PID, "eth0", spec.Addr); ok || err != nil {
			t.Errorf("ContainerHasLink on an exited process = %v, %v; want false, nil", ok, err)
		}
	})

	c := newContainer(t, "c1")
	t.Run("daemon's own namespace", func(t *testing.T) {
		spec := bridgedSpec(t, c, "h1", br, "10.200.3.18/28", "10.200.3.17")
		spec.PID = os.Getpid()
		before := ipLinks(t, "")
		if err := n.Attach(spec); err == nil || !strings.Contains(err.Error(), "own network namespace") {
			t.Fatalf("Attach into the daemon's namespace: err = %v", err)
		}
		if after := ipLinks(t, ""); len(after) != len(before) {
			t.Errorf("links changed: %d before, %d after", len(before), len(after))
		}
	})

	t.Run("missing bridge", func(t *testing.T) {
		spec := bridgedSpec(t, c, "h1", "zltl"+testID(t)+"x", "10.200.3.18/28", "10.200.3.17")
		if err := n.Attach(spec); err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("Attach to a missing bridge: err = %v", err)
		}
		assertNothingLeft(t, c, spec, br)
	})

	t.Run("foreign interface in the container", func(t *testing.T) {
		if out, err := c.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		defer c.run("ip", "link", "del", "eth0")
		spec := bridgedSpec(t, c, "h1", br, "10.200.3.18/28", "10.200.3.17")
		err := n.Attach(spec)
		if err == nil || !strings.Contains(err.Error(), "already has an interface named eth0") {
			t.Fatalf("Attach with eth0 taken: err = %v", err)
		}
		if _, ok := ipLinks(t, "")[spec.HostName]; ok {
			t.Errorf("host end left behind")
		}
		if l := ipLinkOf(t, c.ns, "eth0"); len(l.globalAddrs()) != 0 {
			t.Errorf("the container's own eth0 was modified: %+v", l)
		}
	})

	t.Run("invalid specs", func(t *testing.T) {
		good := bridgedSpec(t, c, "h1", br, "10.200.3.18/28", "10.200.3.17")
		for name, mutate := range map[string]func(*AttachSpec){
			"long host name":      func(s *AttachSpec) { s.HostName = "zltl-much-too-long-name" },
			"bridge + host route": func(s *AttachSpec) { s.HostRoute = true },
			"gateway family":      func(s *AttachSpec) { s.Gateway = netip.MustParseAddr("fd00::1") },
			"no address":          func(s *AttachSpec) { s.Addr = netip.Prefix{} },
		} {
			s := good
			mutate(&s)
			if err := n.Attach(s); err == nil || !strings.Contains(err.Error(), "invalid spec") {
				t.Errorf("%s: err = %v, want an invalid-spec error", name, err)
			}
		}
		assertNothingLeft(t, c, good, br)
	})
}

func TestDetach(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	br := setupBridge(t, n, "10.200.3.17/28", 1400)
	c := newContainer(t, "c1")
	spec := bridgedSpec(t, c, "h1", br, "10.200.3.18/28", "10.200.3.17")
	if err := n.Attach(spec); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := n.Detach(spec.HostName); err != nil {
			t.Fatal(err)
		}
		assertNothingLeft(t, c, spec, br)
	}
	if err := n.Detach(br); err == nil {
		t.Error("Detach deleted a bridge")
	}
	if ok, _ := n.LinkExists(br); !ok {
		t.Error("bridge gone after a refused Detach")
	}
}

func TestAttachConcurrent(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	br := setupBridge(t, n, "10.200.3.1/24", 1400)
	const count = 4
	var specs []AttachSpec
	var ctrs []*container
	for i := range count {
		c := newContainer(t, fmt.Sprintf("c%d", i))
		ctrs = append(ctrs, c)
		specs = append(specs, bridgedSpec(t, c, fmt.Sprintf("h%d", i), br, fmt.Sprintf("10.200.3.%d/24", 10+i), "10.200.3.1"))
	}
	parallel := func(f func(AttachSpec) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, count)
		for i, s := range specs {
			wg.Go(func() { errs[i] = f(s) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	parallel(n.Attach)
	for i, c := range ctrs {
		checkContainerSide(t, c, specs[i])
		c.mustPing(t, fmt.Sprintf("10.200.3.%d", 10+(i+1)%count))
	}
	parallel(func(s AttachSpec) error { return n.Detach(s.HostName) })
	for i, c := range ctrs {
		assertNothingLeft(t, c, specs[i], br)
	}
}
