//go:build unix

package ipc

import (
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
)

// Policy decides which callers may use the daemon: root, the daemon's own
// user, and members of the zlayer group. Everyone else is refused before a
// single request is read.
type Policy struct {
	// DaemonUID is the daemon's effective uid.
	DaemonUID uint32
	// GroupID is the gid of group zlayer; HasGroup is false when the group
	// does not exist on this host.
	GroupID  uint32
	HasGroup bool
}

// DefaultPolicy builds the policy of the running process.
func DefaultPolicy() Policy {
	p := Policy{DaemonUID: uint32(os.Geteuid())}
	if g, err := user.LookupGroup(SocketGroup); err == nil {
		if gid, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			p.GroupID, p.HasGroup = uint32(gid), true
		}
	}
	return p
}

// Allow returns nil when c may connect, or an error that says why not.
func (p Policy) Allow(c Caller) error {
	if c.UID == 0 || c.UID == p.DaemonUID {
		return nil
	}
	if p.HasGroup && (c.GID == p.GroupID || slices.Contains(c.Groups, p.GroupID)) {
		return nil
	}
	if p.HasGroup {
		return fmt.Errorf("permission denied: %s is not root, the daemon's user (uid %d) or a member of group %s", c, p.DaemonUID, SocketGroup)
	}
	return fmt.Errorf("permission denied: %s is not root or the daemon's user (uid %d); create group %s to grant access", c, p.DaemonUID, SocketGroup)
}

// Privileged reports whether c is root or the daemon's own user: the
// callers that may ask for what holds private keys (a backup of the state
// file). Members of group zlayer drive the overlay but are not privileged.
func (p Policy) Privileged(c Caller) bool { return c.UID == 0 || c.UID == p.DaemonUID }
