package wg

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// checkLinkFree refuses a name that is already taken by a link in this
// network namespace. For the userspace backend no existing link can be
// ours: its TUN dies with the process that made it.
func checkLinkFree(name string) error {
	l, err := netlink.LinkByName(name)
	if err == nil {
		return fmt.Errorf("a %s link named %q already exists in this network namespace and is not ours; refusing to touch it (delete it or choose another name)", l.Type(), name)
	}
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	return fmt.Errorf("look up link %q: %w", name, err)
}

// removeLink deletes link. A link that vanished after it was looked up
// counts as removed: a data plane's TUN goes with its process, so one
// killed just before Close can take the link away between the lookup and
// the delete.
func removeLink(link netlink.Link) error {
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// setLinkLabel sets the label (IFLA_IFALIAS) of the link named name.
func setLinkLabel(name, alias string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetAlias(link, alias)
}
