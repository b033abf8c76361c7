//go:build unix

package main

import (
	"net"
	"os"
	"syscall"

	"github.com/zlayer/zlayer-overlayd/internal/ipc"
)

// pprofUnixSupported: the connecting user of a Unix socket is known
// (SO_PEERCRED, LOCAL_PEERCRED).
const pprofUnixSupported = true

// listenUnixPrivate binds a Unix socket that only its owner can connect
// to from the first moment: created under umask 0177, then made 0600.
func listenUnixPrivate(path string) (net.Listener, error) {
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// unixPeerUID is the uid of the process that connected (kernel credentials).
func unixPeerUID(c net.Conn) (uint32, error) {
	caller, err := ipc.PeerCaller(c)
	return caller.UID, err
}
