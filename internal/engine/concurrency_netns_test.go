package engine

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Races around the host links of container attachments, netns ones above
// all (see concurrency_test.go for how each test puts one request into
// another's gap). A host link belongs to one attachment: no request, and no
// reconcile pass, may build over or delete the link of an attachment that
// was, or is about to be, acknowledged.

// Two CNI container ids whose host link names collide: netnsVethName keeps
// 40 bits of FNV-1a, so about one pair in a trillion does; these were found
// by search.
const collideA, collideB = "c1471479", "c1963013"

func checkCollision(t *testing.T) {
	t.Helper()
	if netnsVethName(collideA, "eth0", 0, 0) != netnsVethName(collideB, "eth0", 0, 0) {
		t.Fatal("the test's container ids no longer give the same host link name")
	}
}

// hostLinkHolds fails unless the attachment's host link is there with its
// address (the fake Net replaces a link built again under its name, as
// linuxnet.Attach rebuilds a pair that differs).
func hostLinkHolds(t *testing.T, h *harness, what string, att protocol.Attached) {
	t.Helper()
	held := h.net.Holding(att.IP)
	if len(held) != 1 {
		t.Fatalf("%s was answered with %s, which is on links %v: want its host link", what, att.IP, held)
	}
	if len(att.Interfaces) > 0 && held[0] != att.Interfaces[0].HostLink {
		t.Fatalf("%s was answered with host link %s, but %s carries its address %s", what, att.Interfaces[0].HostLink, held[0], att.IP)
	}
}

// Two netns attaches in different services (no lock in common) whose host
// link names collide: each looked at the committed attachments, found the
// name free, and took it; the second built its pair over the first's,
// and both were answered with one host link.
func TestParallelNetnsAttachesDoNotShareAHostLink(t *testing.T) {
	checkCollision(t)
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "a", Mode: "shared"})
	h.ok(protocol.SetupServiceOverlay{Service: "b", Mode: "shared"})
	h.procs.AddNetns("/var/run/netns/a")
	h.procs.AddNetns("/var/run/netns/b")
	var second protocol.Response
	wait := during(t, h.e, "netns.wired", func() {
		second = h.do(netnsAttach("/var/run/netns/b", collideB, "eth0", "b", false))
	})
	first := h.ok(netnsAttach("/var/run/netns/a", collideA, "eth0", "a", false)).(protocol.Attached)
	wait()
	b, ok := second.(protocol.Attached)
	if !ok {
		t.Fatalf("second attach: %+v", second)
	}
	if first.Interfaces[0].HostLink == b.Interfaces[0].HostLink {
		t.Fatalf("two attachments were answered with host link %s", b.Interfaces[0].HostLink)
	}
	hostLinkHolds(t, h, collideA, first)
	hostLinkHolds(t, h, collideB, b)
}

// A reconcile pass lists the links, and judges each one after: a link it
// listed with the label of an attachment detached meanwhile was deleted
// once that attachment's lock was free, even when a netns attach of another
// handle had built a link of the same name since and was about to commit
// it. The attach was answered ok without its link.
func TestReconcileKeepsALinkANetnsAttachIsBuilding(t *testing.T) {
	checkCollision(t)
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "a", Mode: "shared"})
	h.ok(protocol.SetupServiceOverlay{Service: "b", Mode: "shared"})
	pa, pb := "/var/run/netns/a", "/var/run/netns/b"
	h.procs.AddNetns(pa)
	h.procs.AddNetns(pb)
	h.ok(netnsAttach(pa, collideA, "eth0", "a", false))

	wired, release := make(chan struct{}), make(chan struct{})
	attached := make(chan protocol.Response, 1)
	var phase atomic.Int32
	h.e.testHook = func(p string) {
		switch {
		case p == "reconcile.links" && phase.CompareAndSwap(0, 1):
			// The pass has listed collideA's link. The container goes,
			// and collideB's attach builds a link of the same name.
			h.ok(protocol.DetachContainer{Handle: protocol.Netns(pa, collideA, "eth0")})
			go func() { attached <- h.do(netnsAttach(pb, collideB, "eth0", "b", false)) }()
			select {
			case <-wired:
			case <-time.After(30 * time.Second):
				t.Error("the second attach never built its links")
			}
		case p == "netns.wired" && phase.CompareAndSwap(1, 2):
			close(wired)
			<-release // until the pass is done
		}
	}
	_, err := h.e.Reconcile(context.Background())
	close(release)
	var resp protocol.Response
	select {
	case resp = <-attached:
	case <-time.After(30 * time.Second):
		t.Fatal("the attach never finished: deadlock")
	}
	h.e.testHook = nil
	if err != nil {
		t.Fatal(err)
	}
	att, ok := resp.(protocol.Attached)
	if !ok {
		t.Fatalf("attach: %+v", resp)
	}
	hostLinkHolds(t, h, collideB, att)
}

// A teardown forgets each member, then deletes its links in the
// background; it holds the service's lock, not the members' handles. A
// re-attach of a member to another service that found the member already
// forgotten did not find its links being deleted either, built its own
// under the same names, and the teardown's deletion then removed them: the
// attach was answered ok without its links.
func TestTeardownDoesNotDeleteTheLinksOfAMembersNextAttach(t *testing.T) {
	for _, tc := range []struct {
		name   string
		handle func(h *harness) protocol.AttachHandle
	}{
		{"linux_pid", func(h *harness) protocol.AttachHandle { h.procs.Add(400); return protocol.LinuxPID(400) }},
		{"netns", func(h *harness) protocol.AttachHandle {
			h.procs.AddNetns("/var/run/netns/m")
			return protocol.Netns("/var/run/netns/m", "m", "eth0")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok(globalReq("10.200.3.0/24"))
			h.ok(protocol.SetupServiceOverlay{Service: "a", Mode: "shared"})
			h.ok(protocol.SetupServiceOverlay{Service: "b", Mode: "shared"})
			hd := tc.handle(h)
			h.ok(protocol.AttachContainer{Handle: hd, Service: "a", JoinGlobal: true})
			var moved protocol.Response
			wait := during(t, h.e, "attach.forgotten", func() {
				moved = h.do(protocol.AttachContainer{Handle: hd, Service: "b", JoinGlobal: true})
			})
			h.ok(protocol.TeardownServiceOverlay{Service: "a"})
			wait()
			h.e.bg.Wait()
			att, ok := moved.(protocol.Attached)
			if !ok {
				t.Fatalf("attach to b: %+v", moved)
			}
			hostLinkHolds(t, h, "the attach to b", att)
			if held := h.net.Holding(att.GlobalIP); len(held) != 1 {
				t.Fatalf("the attach to b was answered with global IP %s, which is on links %v: want its eth1's host link", att.GlobalIP, held)
			}
		})
	}
}

// A repair of a committed attachment (a repeated attach, or a reconcile
// pass rebuilding a lost eth1) that fails on eth1 rolled eth0 back as a
// new attach does: it deleted the working eth0 of an attachment that
// stays, acknowledged, in the state.
func TestFailedRepairKeepsTheAttachmentsEth0(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	const path = "/var/run/netns/r"
	h.procs.AddNetns(path)
	h.procs.Add(500)
	for _, hd := range []protocol.AttachHandle{protocol.Netns(path, "r", "eth0"), protocol.LinuxPID(500)} {
		att := h.ok(protocol.AttachContainer{Handle: hd, Service: "web", JoinGlobal: true}).(protocol.Attached)
		h.net.FailAttach(func(s linuxnet.AttachSpec) error {
			if s.Addr.Addr() == att.GlobalIP {
				return errors.New("injected failure on eth1")
			}
			return nil
		})
		h.fails(protocol.AttachContainer{Handle: hd, Service: "web", JoinGlobal: true}, "injected failure on eth1")
		if held := h.net.Holding(att.IP); len(held) != 1 {
			t.Fatalf("%s: a failed repeat attach left its eth0 (%s) on links %v", hd.Platform, att.IP, held)
		}
		// The same in a reconcile pass: eth1 is lost and cannot be rebuilt.
		for _, l := range h.net.Holding(att.GlobalIP) {
			h.net.DeleteLink(l)
		}
		if _, err := h.e.Reconcile(context.Background()); err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("%s: reconcile = %v; want the injected failure", hd.Platform, err)
		}
		h.net.FailAttach(nil)
		if held := h.net.Holding(att.IP); len(held) != 1 {
			t.Fatalf("%s: a failed reconcile repair left its eth0 (%s) on links %v", hd.Platform, att.IP, held)
		}
		if _, err := h.e.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		if len(h.net.Holding(att.IP)) != 1 || len(h.net.Holding(att.GlobalIP)) != 1 {
			t.Fatalf("%s: the next pass did not rebuild eth1", hd.Platform)
		}
	}
}
