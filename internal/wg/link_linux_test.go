package wg

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

// A TUN goes away on its own when its process dies, so a link looked up
// alive can be gone by the time we delete it (CI saw "close: delete the
// link ...: no such device" after a data plane was killed). That is the
// outcome Close wanted, not an error.
func TestRemoveLinkThatVanishedAfterLookup(t *testing.T) {
	requireRoot(t)
	name := "zltw" + randHex(t, 5) + "v"
	run(t, "ip", "link", "add", name, "type", "bridge")
	t.Cleanup(func() { netlink.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}) })
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "link", "del", name)
	if err := removeLink(link); err != nil {
		t.Fatalf("removing a link that is already gone: %v", err)
	}
}

func TestRemoveLinkDeletesIt(t *testing.T) {
	requireRoot(t)
	name := "zltw" + randHex(t, 5) + "r"
	run(t, "ip", "link", "add", name, "type", "bridge")
	t.Cleanup(func() { netlink.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}) })
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := removeLink(link); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(name); !errors.As(err, &netlink.LinkNotFoundError{}) {
		t.Fatalf("the link is still there after removeLink: %v", err)
	}
}
