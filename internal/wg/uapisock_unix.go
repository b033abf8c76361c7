//go:build linux || darwin || freebsd || openbsd

package wg

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/ipc"
)

// uapiDir is where wireguard-go's ipc package publishes sockets and where
// wg(8) looks for them. It is a filesystem path, so it is shared by every
// network namespace on the host.
const uapiDir = "/var/run/wireguard"

func uapiSocketPath(name string) string { return filepath.Join(uapiDir, name+".sock") }

// freeUAPI makes sure the device's UAPI socket path is free: a socket
// nobody listens on (left by a crash) is removed; one that accepts
// connections belongs to a running device and is an error.
func freeUAPI(name string, log *slog.Logger) error {
	path := uapiSocketPath(name)
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if errors.Is(err, fs.ErrPermission) {
		// wg(8) and wireguard-go make the directory root's alone, so an
		// unprivileged user stops here, before the TUN device would have
		// said what is missing: say it here.
		return fmt.Errorf("wireguard device %q: cannot inspect its UAPI socket %s: %w (only root may use %s; %s)", name, path, err, uapiDir, tunHint)
	}
	if err != nil {
		return fmt.Errorf("inspect UAPI socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists but is not a socket; refusing to replace it (remove it if nothing needs it)", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("wireguard device %q already exists: another process serves its UAPI socket %s (see wg show %s); refusing to create a second one", name, path, name)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot tell whether UAPI socket %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale UAPI socket %s: %w", path, err)
	}
	log.Info("removed stale UAPI socket left by a previous process", "path", path)
	return nil
}

// listenUAPI publishes the device's UAPI socket. The listener ipc returns
// reports exactly two terminal errors through Accept: one from the goroutine
// watching the socket file for deletion (inotify or kqueue) and one from its
// accept loop.
func listenUAPI(name string) (net.Listener, int, error) {
	path := uapiSocketPath(name)
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return nil, 0, fmt.Errorf("publish UAPI socket %s: %w", path, err)
	}
	// UAPIListen keeps its own duplicate of the descriptor.
	defer f.Close()
	ln, err := ipc.UAPIListen(name, f)
	if err != nil {
		os.Remove(path)
		return nil, 0, fmt.Errorf("publish UAPI socket %s: %w", path, err)
	}
	return ln, 2, nil
}
