package wg

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
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
