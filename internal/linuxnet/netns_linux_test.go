package linuxnet

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNetnsFileInode checks how a namespace file is judged: the inode of a live network
// namespace whichever way it is named, and a clear error for a path that is gone, a
// namespace file whose mount went away, a plain file and a namespace of another kind.
func TestNetnsFileInode(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	name := "zltl-" + testID(t) + "-fi"
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	path := "/run/netns/" + name

	got, err := NetnsFileInode(path)
	if err != nil || got != fileInode(t, path) {
		t.Fatalf("NetnsFileInode(%s) = %d, %v; want %d (stat's answer)", path, got, err, fileInode(t, path))
	}
	self, err := NetnsFileInode("/proc/self/ns/net")
	if err != nil || self != fileInode(t, "/proc/self/ns/net") || self == got {
		t.Errorf("NetnsFileInode(/proc/self/ns/net) = %d, %v; want %d, unlike %d", self, err, fileInode(t, "/proc/self/ns/net"), got)
	}

	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want error
	}{
		{"/run/netns/zltl-" + testID(t) + "-never", fs.ErrNotExist},
		{plain, ErrNotNetns},
		{"/proc/self/ns/mnt", ErrNotNetns},
	} {
		if _, err := NetnsFileInode(tc.path); !errors.Is(err, tc.want) {
			t.Errorf("NetnsFileInode(%s) = %v; want an error wrapping %v", tc.path, err, tc.want)
		}
	}

	// What a runtime leaves when it unmounts a namespace but the file stays: a plain
	// empty file at the same path.
	mustRun(t, "umount", path)
	if _, err := NetnsFileInode(path); !errors.Is(err, ErrNotNetns) {
		t.Errorf("after umount: NetnsFileInode = %v; want ErrNotNetns", err)
	}
	mustRun(t, "ip", "netns", "del", name)
	if _, err := NetnsFileInode(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after ip netns del: NetnsFileInode = %v; want fs.ErrNotExist", err)
	}
}

// TestAttachByNetnsPath attaches into a namespace given by its file, as CNI gives it,
// checks InspectNetns against iproute2, and checks that an inode that no longer matches
// is refused without leaving anything behind.
func TestAttachByNetnsPath(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	n := newTestNet(t)
	br := setupBridge(t, n, "10.200.3.17/28", 1400)
	name := "zltl-" + testID(t) + "-np"
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	path := "/run/netns/" + name
	ino, err := NetnsFileInode(path)
	if err != nil {
		t.Fatal(err)
	}

	spec := AttachSpec{
		NetnsPath:  path,
		NetnsInode: ino + 1, // another namespace's
		HostName:   "zltl" + testID(t) + "np",
		IfName:     "net1",
		Addr:       netip.MustParsePrefix("10.200.3.18/28"),
		MTU:        1400,
		Bridge:     br,
		Gateway:    netip.MustParseAddr("10.200.3.17"),
	}
	if err := n.Attach(spec); err == nil || !strings.Contains(err.Error(), "no longer the network namespace") {
		t.Fatalf("Attach with a stale inode = %v; want a refusal naming the namespace change", err)
	}
	if _, ok := ipLinks(t, "")[spec.HostName]; ok {
		t.Fatalf("a refused attach left %s behind", spec.HostName)
	}
	if _, found, err := InspectNetns(path, "net1"); err != nil || found {
		t.Fatalf("InspectNetns before the attach = found %v, %v; want nothing", found, err)
	}

	spec.NetnsInode = ino
	if err := n.Attach(spec); err != nil {
		t.Fatal(err)
	}
	link, found, err := InspectNetns(path, "net1")
	if err != nil || !found {
		t.Fatalf("InspectNetns = found %v, %v", found, err)
	}
	observed := ipLinkOf(t, name, "net1")
	if link.Index != observed.Index || link.Kind != "veth" || !link.Up || link.MTU != 1400 {
		t.Errorf("InspectNetns = %+v; iproute2 sees index %d, mtu %d", link, observed.Index, observed.MTU)
	}
	mac := strings.TrimSpace(mustRun(t, "ip", "-n", name, "-br", "link", "show", "net1"))
	if link.MAC.String() == "" || !strings.Contains(mac, link.MAC.String()) {
		t.Errorf("InspectNetns MAC %q; iproute2: %s", link.MAC, mac)
	}
	if !link.HasAddr(spec.Addr) || link.HasAddr(netip.MustParsePrefix("10.200.3.18/32")) {
		t.Errorf("InspectNetns addresses %v; want %s", link.Addrs, spec.Addr)
	}
	if !link.HasRoute(netip.MustParsePrefix("0.0.0.0/0"), spec.Gateway) || !link.HasRoute(netip.MustParsePrefix("10.200.3.18/28"), netip.Addr{}) {
		t.Errorf("InspectNetns routes %v; want the default via %s and the subnet on the link", link.Routes, spec.Gateway)
	}
	if link.HasRoute(netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("10.200.3.20")) {
		t.Errorf("HasRoute matched a default route via another gateway: %v", link.Routes)
	}

	mustRun(t, "ip", "netns", "del", name)
	if _, _, err := InspectNetns(path, "net1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("InspectNetns of a deleted namespace = %v; want fs.ErrNotExist", err)
	}
	if err := n.Detach(spec.HostName); err != nil {
		t.Errorf("Detach after the namespace went: %v", err)
	}
}
