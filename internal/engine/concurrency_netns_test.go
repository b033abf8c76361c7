package engine

import (
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Races around the host links of container attachments, netns ones above
// all (see concurrency_test.go for how each test puts one request into
// another's gap). A host link belongs to one attachment: no request, and no
// reconcile pass, may build over or delete the link of an attachment that
// was, or is about to be, acknowledged.

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
