package engine

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

func netnsAttach(path, cid, ifName, service string, global bool) protocol.AttachContainer {
	return protocol.AttachContainer{Handle: protocol.Netns(path, cid, ifName), Service: service, JoinGlobal: global}
}

func TestNetnsVethNames(t *testing.T) {
	seen := map[string]bool{}
	for _, cid := range []string{"a", "b", "cnitool-0123456789abcdef0123", strings.Repeat("f", 64)} {
		for _, ifn := range []string{"eth0", "eth1", "net1"} {
			for which := range 2 {
				n := netnsVethName(cid, ifn, which, 0)
				if len(n) != maxIfName || !isNetnsVethName(n) || !validIfName(n) {
					t.Errorf("netnsVethName(%s, %s, %d) = %q: not 15 bytes of our shape", cid, ifn, which, n)
				}
				if _, _, ok := parseVethName(n); ok {
					t.Errorf("%s parses as a linux_pid veth name", n)
				}
				if n != netnsVethName(cid, ifn, which, 0) {
					t.Errorf("netnsVethName is not deterministic for %s/%s", cid, ifn)
				}
				if seen[n] {
					t.Errorf("%s given twice", n)
				}
				seen[n] = true
			}
		}
	}
	for _, n := range []string{"zl-v4242-e0", "zl-v0-e1", "zl-vn012345678", "zl-vn0123456789a", "zl-vn012345678g", "zl-vnABCDEF0123", "zl-prod-web-b"} {
		if isNetnsVethName(n) {
			t.Errorf("isNetnsVethName(%q) = true", n)
		}
	}
	if isNetnsVethName(vethName(maxPID, 1)) {
		t.Error("a linux_pid name has the netns shape")
	}
}

// TestNetnsAttachDetach goes through a CNI container's life: attach with
// join_global, the answer's interfaces, idempotence, a second interface of
// the same container, status, detach (twice, and without a path).
func TestNetnsAttachDetach(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	svc := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	subnet := netip.MustParsePrefix(svc.Subnet)
	const path = "/var/run/netns/cni-1"
	ino := h.procs.AddNetns(path)

	att := h.ok(netnsAttach(path, "c1", "eth0", "web", true)).(protocol.Attached)
	if !subnet.Contains(att.IP) || att.IP == svc.Gateway || !att.GlobalIP.IsValid() {
		t.Fatalf("attached %+v, service subnet %s", att, subnet)
	}
	if att.DNSServer.IsValid() && att.DNSServer != svc.Gateway {
		t.Errorf("dns server %s; the bridge gateway %s serves this container", att.DNSServer, svc.Gateway)
	}
	if len(att.Interfaces) != 2 {
		t.Fatalf("interfaces %+v; want eth0 and eth0g", att.Interfaces)
	}
	eth, glob := att.Interfaces[0], att.Interfaces[1]
	wantEth := protocol.AttachedInterface{
		IfName: "eth0", HostLink: netnsVethName("c1", "eth0", 0, 0),
		Addresses: []protocol.AttachedAddress{{Address: netip.PrefixFrom(att.IP, subnet.Bits()), Gateway: svc.Gateway}},
		Routes:    []protocol.AttachedRoute{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: svc.Gateway}},
	}
	wantGlob := protocol.AttachedInterface{
		IfName: "eth0g", HostLink: netnsVethName("c1", "eth0", 1, 0),
		Addresses: []protocol.AttachedAddress{{Address: netip.PrefixFrom(att.GlobalIP, 32)}},
		Routes:    []protocol.AttachedRoute{{Dst: netip.MustParsePrefix("10.200.0.0/16"), Via: netip.MustParseAddr("10.200.3.1"), OnLink: true}},
	}
	if fmt.Sprint(eth) != fmt.Sprint(wantEth) || fmt.Sprint(glob) != fmt.Sprint(wantGlob) {
		t.Fatalf("interfaces\n got %+v\n     %+v\nwant %+v\n     %+v", eth, glob, wantEth, wantGlob)
	}
	for _, i := range att.Interfaces {
		l, ok := h.net.Link(i.HostLink)
		if !ok || l.Spec.NetnsPath != path || l.Spec.NetnsInode != ino || l.Spec.PID != 0 || l.Spec.IfName != i.IfName || l.Spec.Addr != i.Addresses[0].Address {
			t.Fatalf("host end %s: %+v", i.HostLink, l.Spec)
		}
		if !strings.HasPrefix(l.Alias, h.e.linkAlias("veth", "netns:c1/eth0")) {
			t.Errorf("host end %s labelled %q", i.HostLink, l.Alias)
		}
	}
	if l, _ := h.net.Link(eth.HostLink); l.Master != svc.Name || l.Spec.Gateway != svc.Gateway {
		t.Errorf("eth0's host end is not a port of %s with the gateway: %+v", svc.Name, l)
	}

	// The same attach again: same answer, nothing new.
	again := h.ok(netnsAttach(path, "c1", "eth0", "web", true)).(protocol.Attached)
	if fmt.Sprint(again) != fmt.Sprint(att) || len(h.net.Veths()) != 2 {
		t.Fatalf("repeat attach: %+v, veths %v", again, h.net.Veths())
	}
	// A second interface of the same container is another attachment.
	net1 := h.ok(netnsAttach(path, "c1", "net1", "web", false)).(protocol.Attached)
	if net1.IP == att.IP || len(net1.Interfaces) != 1 || net1.Interfaces[0].IfName != "net1" || len(h.net.Veths()) != 3 {
		t.Fatalf("second interface: %+v, veths %v", net1, h.net.Veths())
	}
	s := h.status()
	if len(s.Attachments) != 0 || len(s.NetnsAttachments) != 2 {
		t.Fatalf("status attachments %+v netns %+v", s.Attachments, s.NetnsAttachments)
	}
	if a := s.NetnsAttachments[0]; a.Handle != protocol.Netns(path, "c1", "eth0") || a.IP != att.IP || a.GlobalIP != att.GlobalIP || a.Service != "web" || a.HostLink != eth.HostLink {
		t.Fatalf("status entry %+v", a)
	}

	h.ok(protocol.DetachContainer{Handle: protocol.Netns(path, "c1", "eth0")})
	h.e.bg.Wait()
	if got := h.net.Veths(); !slices.Equal(got, []string{net1.Interfaces[0].HostLink}) {
		t.Fatalf("veths after detaching eth0: %v", got)
	}
	h.ok(protocol.DetachContainer{Handle: protocol.Netns(path, "c1", "eth0")}) // again: ok
	// CNI_NETNS may be empty on DEL.
	h.ok(protocol.DetachContainer{Handle: protocol.Netns("", "c1", "net1")})
	h.e.bg.Wait()
	if s := h.status(); len(h.net.Veths()) != 0 || len(s.NetnsAttachments) != 0 || s.Services[0].Used != 1 || s.SlicePool.Used != 1 {
		t.Fatalf("detach left veths %v, state %+v %+v %+v", h.net.Veths(), s.NetnsAttachments, s.Services, s.SlicePool)
	}
}

func TestNetnsAttachErrors(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.ok(protocol.SetupServiceOverlay{Service: "db", Mode: "shared"})
	const path = "/var/run/netns/cni-2"
	h.procs.AddNetns(path)
	h.fails(netnsAttach("/var/run/netns/none", "c", "eth0", "web", false), "/var/run/netns/none does not exist")
	h.fails(netnsAttach("", "c", "eth0", "web", false), "path is empty")
	h.fails(netnsAttach("run/netns/x", "c", "eth0", "web", false), "absolute")
	h.fails(netnsAttach("/var/run/../run/netns/x", "c", "eth0", "web", false), "clean")
	h.fails(netnsAttach(path, "", "eth0", "web", false), "container_id is empty")
	h.fails(netnsAttach(path, "-c", "eth0", "web", false), "not a CNI container id")
	h.fails(netnsAttach(path, "c/d", "eth0", "web", false), "not a CNI container id")
	h.fails(netnsAttach(path, strings.Repeat("c", maxContainerID+1), "eth0", "web", false), "at most 128")
	h.fails(netnsAttach(path, "c", "eth/0", "web", false), "not a Linux interface name")
	h.fails(netnsAttach(path, "c", "0123456789abcdef", "web", false), "not a Linux interface name")
	h.fails(netnsAttach(path, "c", "lo", "web", false), "loopback")
	h.fails(netnsAttach(path, "c", "0123456789abcde", "web", true), "join_global", "at most 14")
	h.fails(netnsAttach(path, "c", "eth0", "nope", false), "setup_service_overlay")
	h.fails(protocol.DetachContainer{Handle: protocol.Netns("", "c:d", "eth0")}, "not a CNI container id")
	h.fails(protocol.DetachContainer{Handle: protocol.Netns("", "c", "")}, "interface name")

	h.ok(netnsAttach(path, "c", "eth0", "web", false))
	h.fails(netnsAttach(path, "c", "eth0", "db", false), "attached to service web")
	h.fails(netnsAttach(path, "c", "eth0", "web", true), "join_global=false")
	if s := h.status(); len(s.NetnsAttachments) != 1 || len(h.net.Veths()) != 1 {
		t.Fatalf("refused attaches changed something: %+v, veths %v", s.NetnsAttachments, h.net.Veths())
	}
}

// TestNetnsAttachRollsBack: a failure on the second link, and a namespace
// deleted while the links were being built, leave nothing.
func TestNetnsAttachRollsBack(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	before := h.status()
	const path = "/var/run/netns/cni-3"
	h.procs.AddNetns(path)
	h.net.FailAttach(func(s linuxnet.AttachSpec) error {
		if s.IfName == "eth0g" {
			return fmt.Errorf("injected failure on eth0g")
		}
		return nil
	})
	h.fails(netnsAttach(path, "c", "eth0", "web", true), "injected failure on eth0g")
	h.net.FailAttach(func(s linuxnet.AttachSpec) error {
		h.procs.DeleteNetns(path) // the runtime deletes the namespace meanwhile
		return nil
	})
	h.fails(netnsAttach(path, "c", "eth0", "web", true), "was deleted during the attach")
	h.net.FailAttach(nil)
	h.e.bg.Wait()
	after := h.status()
	if len(h.net.Veths()) != 0 || len(after.NetnsAttachments) != 0 || fmt.Sprint(before.Services, before.SlicePool) != fmt.Sprint(after.Services, after.SlicePool) {
		t.Fatalf("rollback incomplete: veths %v, %+v\nbefore %v %v\nafter  %v %v", h.net.Veths(), after.NetnsAttachments, before.Services, before.SlicePool, after.Services, after.SlicePool)
	}
	h.crash()
	if s := h.status(); len(s.NetnsAttachments) != 0 {
		t.Fatal("a failed attach reached the store")
	}
}

// TestNetnsReconcile: reconcile judges a netns attachment by its namespace
// file, not by a PID: gone or replaced namespaces are forgotten, lost links
// are rebuilt, live ones are left alone, across a restart too.
func TestNetnsReconcile(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	ips := map[string]netip.Addr{}
	for _, c := range []string{"gone", "replaced", "cut", "fine"} {
		p := "/var/run/netns/" + c
		h.procs.AddNetns(p)
		ips[c] = h.ok(netnsAttach(p, c, "eth0", "web", c == "fine")).(protocol.Attached).IP
	}
	h.procs.DeleteNetns("/var/run/netns/gone")
	h.net.DeleteNetns("/var/run/netns/gone")
	h.procs.AddNetns("/var/run/netns/replaced") // a new namespace under the old path
	h.net.DeleteNetns("/var/run/netns/replaced")
	h.net.DeleteLink(netnsVethName("cut", "eth0", 0, 0)) // by someone else
	// A labelled netns veth nothing wants (a detach interrupted by a crash).
	stray := netnsVethName("stray", "eth0", 0, 0)
	h.net.AddLink(stray, enginetest.Link{Kind: "veth", Alias: h.e.linkAlias("veth", "netns:stray/eth0"), Spec: &linuxnet.AttachSpec{NetnsPath: "/x"}})

	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.e.bg.Wait()
	var left []string
	for _, a := range h.status().NetnsAttachments {
		left = append(left, a.Handle.ContainerID)
		if a.IP != ips[a.Handle.ContainerID] {
			t.Errorf("%s changed its address: %s, was %s", a.Handle.ContainerID, a.IP, ips[a.Handle.ContainerID])
		}
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"cut", "fine"}) {
		t.Fatalf("attachments after reconcile %v, want [cut fine]", left)
	}
	want := []string{netnsVethName("cut", "eth0", 0, 0), netnsVethName("fine", "eth0", 0, 0), netnsVethName("fine", "eth0", 1, 0)}
	slices.Sort(want)
	if got := h.net.Veths(); !slices.Equal(got, want) {
		t.Fatalf("veths %v, want %v", got, want)
	}

	n := h.net.Attaches()
	h.crash()
	if h.net.Attaches() != n {
		t.Error("the restart re-created intact links")
	}
	if s := h.status(); len(s.NetnsAttachments) != 2 {
		t.Fatalf("after the restart: %+v", s.NetnsAttachments)
	}
	// The released addresses are handed out again.
	h.procs.AddNetns("/var/run/netns/new")
	got := h.ok(netnsAttach("/var/run/netns/new", "new", "eth0", "web", false)).(protocol.Attached).IP
	if got != ips["gone"] && got != ips["replaced"] {
		t.Errorf("a new container got %s, not one of the released %s, %s", got, ips["gone"], ips["replaced"])
	}
}

// TestNetnsNewNamespaceReplacesTheAttachment: an ADD for the same
// (container id, ifname) in a new namespace (no DEL in between) moves the
// attachment there instead of answering for the dead one.
func TestNetnsNewNamespaceReplacesTheAttachment(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.AddNetns("/var/run/netns/a")
	h.ok(netnsAttach("/var/run/netns/a", "c", "eth0", "web", false))
	h.procs.DeleteNetns("/var/run/netns/a")
	h.net.DeleteNetns("/var/run/netns/a")
	ino := h.procs.AddNetns("/var/run/netns/b")
	att := h.ok(netnsAttach("/var/run/netns/b", "c", "eth0", "web", false)).(protocol.Attached)
	h.e.bg.Wait()
	s := h.status()
	if len(s.NetnsAttachments) != 1 || s.NetnsAttachments[0].Handle.Path != "/var/run/netns/b" || s.Services[0].Used != 2 {
		t.Fatalf("after the move: %+v %+v", s.NetnsAttachments, s.Services)
	}
	if l, ok := h.net.Link(att.Interfaces[0].HostLink); !ok || l.Spec.NetnsPath != "/var/run/netns/b" || l.Spec.NetnsInode != ino {
		t.Fatalf("host end %+v", l.Spec)
	}
}

func TestNetnsStartupRemovesUnlabelledVethsOfOurShape(t *testing.T) {
	h := newHarness(t)
	ours := netnsVethName("interrupted", "eth0", 0, 0)
	h.net.AddLink(ours, enginetest.Link{Kind: "veth", Spec: &linuxnet.AttachSpec{NetnsPath: "/x"}})
	h.net.AddLink("zl-vnotours", enginetest.Link{Kind: "veth"})
	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !h.net.Has(ours) {
		t.Fatal("a periodic reconcile deleted an unlabelled veth: a request may be labelling it")
	}
	h.crash()
	if got := h.net.Veths(); !slices.Equal(got, []string{"zl-vnotours"}) {
		t.Fatalf("veths after the restart %v, want [zl-vnotours]", got)
	}
}

func TestNetnsHostLinkNamesSkipTakenOnes(t *testing.T) {
	h := newHarness(t)
	h.e.locked(func() {
		h.e.st.attach["other"] = &store.Attachment{Key: "other", HostLink: netnsVethName("c", "eth0", 0, 0), HostLinkGlobal: netnsVethName("c", "eth0", 1, 0)}
	})
	eth, glob, unreserve, err := h.e.pickNetnsLinks("netns:c/eth0", "c", "eth0", true)
	if err != nil || eth != netnsVethName("c", "eth0", 0, 1) || glob != netnsVethName("c", "eth0", 1, 1) {
		t.Fatalf("pickNetnsLinks = %s, %s, %v; want the salt-1 names", eth, glob, err)
	}
	unreserve()
	h.e.locked(func() { delete(h.e.st.attach, "other") })
}

// TestNetnsDualStack: in a dual-stack cluster a netns attachment gets an
// address of each family on each interface, and the answer and status say
// so, as the links are built.
func TestNetnsDualStack(t *testing.T) {
	h := newHarness(t)
	h.ok(dualReq())
	svc := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	const path = "/var/run/netns/cni-ds"
	h.procs.AddNetns(path)
	att := h.ok(netnsAttach(path, "c", "eth0", "web", true)).(protocol.Attached)
	if len(att.IPs) != 2 || len(att.GlobalIPs) != 2 || len(att.Interfaces) != 2 {
		t.Fatalf("attached %+v", att)
	}
	eth, glob := att.Interfaces[0], att.Interfaces[1]
	v4, v6 := netip.MustParsePrefix(svc.Subnets[0]), netip.MustParsePrefix(svc.Subnets[1])
	want := []protocol.AttachedAddress{
		{Address: netip.PrefixFrom(att.IPs[0], v4.Bits()), Gateway: svc.Gateways[0]},
		{Address: netip.PrefixFrom(att.IPs[1], v6.Bits()), Gateway: svc.Gateways[1]},
	}
	if fmt.Sprint(eth.Addresses) != fmt.Sprint(want) || len(eth.Routes) != 2 || eth.Routes[1].Dst != netip.MustParsePrefix("::/0") || eth.Routes[1].Via != svc.Gateways[1] {
		t.Fatalf("eth0 %+v, want addresses %+v and a default route per family", eth, want)
	}
	l, _ := h.net.Link(eth.HostLink)
	if l.Spec.Addr != want[0].Address || l.Spec.Addr2 != want[1].Address || l.Spec.Gateway2 != svc.Gateways[1] {
		t.Fatalf("built %+v, answered %+v", l.Spec, eth)
	}
	if len(glob.Addresses) != 2 || glob.Addresses[1].Address != netip.PrefixFrom(att.GlobalIPs[1], 128) || len(glob.Routes) != 2 || glob.Routes[1].Dst != netip.MustParsePrefix("fd00:200::/56") {
		t.Fatalf("eth0g %+v", glob)
	}
	gl, _ := h.net.Link(glob.HostLink)
	if gl.Spec.Addr2 != glob.Addresses[1].Address {
		t.Fatalf("built %+v, answered %+v", gl.Spec, glob)
	}
	s := h.status().NetnsAttachments
	if len(s) != 1 || !slices.Equal(s[0].IPs, att.IPs) || !slices.Equal(s[0].GlobalIPs, att.GlobalIPs) {
		t.Fatalf("status %+v, attached %+v", s, att)
	}
	h.ok(protocol.DetachContainer{Handle: protocol.Netns("", "c", "eth0")})
	h.e.bg.Wait()
	if st := h.status(); len(st.NetnsAttachments) != 0 || len(h.net.Veths()) != 0 {
		t.Fatalf("detach left %+v %v", st.NetnsAttachments, h.net.Veths())
	}
}

// A CNI DEL (or GC) is a detach of a netns handle, and a runtime may ADD
// the same interface again, or look, as soon as it returns: the answer
// comes once the container's links are gone, not while the kernel still
// deletes them. (linux_pid detaches answer first, the main daemon never
// reuses a PID's interface at once, and a re-attach waits for the links.)
func TestNetnsDetachAnswersOnceTheLinksAreGone(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	const path = "/var/run/netns/cni-slow"
	h.procs.AddNetns(path)
	att := h.ok(netnsAttach(path, "c1", "eth0", "web", true)).(protocol.Attached)
	// Deleting a veth takes an RCU grace period in the kernel; here longer.
	h.net.OnDetach(func(string) { time.Sleep(100 * time.Millisecond) })

	h.ok(protocol.DetachContainer{Handle: protocol.Netns(path, "c1", "eth0")})
	for _, i := range att.Interfaces {
		if _, ok := h.net.Link(i.HostLink); ok {
			t.Errorf("detach answered while %s still existed", i.HostLink)
		}
	}
}
