//go:build unix

package ipc

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// SocketGroup is the group whose members may use the socket besides root
// and the daemon's own user.
const SocketGroup = "zlayer"

// Listen binds the daemon's Unix socket at path.
//
// Unlike the reference, an existing path is probed first: if a daemon
// answers there, Listen fails rather than stealing the socket from it; only
// a dead socket is removed. The socket is made 0660 and, when the group
// exists, owned by group zlayer, so the main daemon can reach it without
// running as root.
func Listen(path string, log *slog.Logger) (net.Listener, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := clearStaleSocket(path, log); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	// Bind with a restrictive umask so the socket is never briefly
	// reachable by everyone before the chmod below.
	old := syscall.Umask(0o117)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod 0660 %s: %w", path, err)
	}
	if g, err := user.LookupGroup(SocketGroup); err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(path, -1, gid); err != nil {
			log.Warn("cannot give the socket to group "+SocketGroup, "path", path, "err", err)
		}
	} else {
		log.Debug("group "+SocketGroup+" does not exist; socket is root-only", "path", path)
	}
	return ln, nil
}

// clearStaleSocket removes path if it is a socket nobody serves, or one
// served by a user who is neither root nor us (someone squatting the
// path; clients would refuse it anyway), and refuses if a live daemon
// answers there or the path is not a socket at all.
func clearStaleSocket(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect socket path %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it (remove it or pick another --socket)", path)
	}
	c, err := net.DialTimeout("unix", path, 500*time.Millisecond)
	if err == nil {
		serr := checkServer(c, path, uint32(os.Geteuid()))
		c.Close()
		if serr == nil {
			return fmt.Errorf("another zlayer-overlayd is serving %s", path)
		}
		log.Warn("taking back a socket path that another user is serving", "path", path, "err", serr)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// Dial connects to the daemon's socket and checks who serves it before
// anything is sent: root, or the caller's own user. A socket path can be
// predicted, and where others can create files (a --socket in /tmp, say)
// someone else may be listening there, ready to read requests and forge
// answers.
func Dial(path string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, err
	}
	if err := checkServer(c, path, uint32(os.Geteuid())); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// checkServer accepts a daemon that runs as root or as self.
func checkServer(c net.Conn, path string, self uint32) error {
	server, err := PeerCaller(c) // the credentials it had when it called listen()
	if err != nil {
		return fmt.Errorf("cannot tell who serves %s, so nothing was sent: %w", path, err)
	}
	if server.UID == 0 || server.UID == self {
		return nil
	}
	return fmt.Errorf("%s is served by uid %d, which is neither root nor you (uid %d); nothing was sent: another user may have taken that path (is it in a directory others can write to?)", path, server.UID, self)
}
