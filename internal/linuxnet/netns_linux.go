package linuxnet

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"slices"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsFileInode returns the inode of the network namespace the file at path names: a bind
// mount such as /var/run/netns/<name> (what `ip netns add` and CNI runtimes make) or a
// process's /proc/<pid>/ns/net. Two paths name the same namespace exactly when these numbers
// are equal, and a namespace file that was unmounted (the runtime deleted the namespace)
// no longer yields its inode.
//
// A missing path is an error wrapping fs.ErrNotExist; a path that exists but is not a
// network namespace (an unmounted placeholder, another kind of namespace, a plain file) is
// an error wrapping ErrNotNetns.
func NetnsFileInode(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return 0, fmt.Errorf("network namespace %s: %w", path, fs.ErrNotExist)
		}
		return 0, fmt.Errorf("network namespace %s: open: %w", path, err)
	}
	defer unix.Close(fd)
	return netnsInodeOf(fd, path)
}

// netnsInodeOf checks that fd is a network namespace and returns its inode.
func netnsInodeOf(fd int, path string) (uint64, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return 0, fmt.Errorf("network namespace %s: statfs: %w", path, err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s: %w (it is no namespace file: was the namespace deleted?)", path, ErrNotNetns)
	}
	// Kernels before 4.11 do not answer NS_GET_NSTYPE; their setns still refuses a
	// namespace of another kind, so the attach fails clearly later.
	if t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err == nil && t != unix.CLONE_NEWNET {
		return 0, fmt.Errorf("%s: %w (it is another kind of namespace)", path, ErrNotNetns)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: stat: %w", path, err)
	}
	return st.Ino, nil
}

// InspectNetns looks at interface ifName inside the network namespace at path without
// changing anything. found is false when the namespace has no such interface; a
// namespace that does not exist is an error wrapping fs.ErrNotExist or ErrNotNetns.
func InspectNetns(path, ifName string) (link NetnsLink, found bool, err error) {
	if err := checkIfName(ifName); err != nil {
		return NetnsLink{}, false, fmt.Errorf("inspect %s in %s: %w", ifName, path, err)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return NetnsLink{}, false, fmt.Errorf("network namespace %s: %w", path, fs.ErrNotExist)
		}
		return NetnsLink{}, false, fmt.Errorf("network namespace %s: open: %w", path, err)
	}
	defer ns.Close()
	if _, err := netnsInodeOf(int(ns), path); err != nil {
		return NetnsLink{}, false, err
	}
	h, err := handleAt(ns)
	if err != nil {
		return NetnsLink{}, false, fmt.Errorf("open a netlink socket in %s: %w", path, err)
	}
	defer h.Close()
	l, found, err := lookupLink(h, ifName)
	if err != nil || !found {
		return NetnsLink{}, false, err
	}
	attrs := l.Attrs()
	out := NetnsLink{
		Name:  attrs.Name,
		Index: attrs.Index,
		Kind:  kindOf(l),
		MAC:   slices.Clone(attrs.HardwareAddr),
		MTU:   attrs.MTU,
		Up:    attrs.Flags&net.FlagUp != 0,
	}
	addrs, err := listAddrs(h, l, unix.AF_UNSPEC)
	if err != nil {
		return NetnsLink{}, false, err
	}
	for _, a := range addrs {
		out.Addrs = append(out.Addrs, prefixOf(a.IPNet))
	}
	routes, err := listRoutesOn(h, l, unix.AF_UNSPEC)
	if err != nil {
		return NetnsLink{}, false, err
	}
	for _, r := range routes {
		out.Routes = append(out.Routes, routeFromNetlink(r, ifName))
	}
	return out, true, nil
}
