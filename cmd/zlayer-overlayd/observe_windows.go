package main

import (
	"errors"
	"net"
)

// pprofUnixSupported: Windows cannot name the caller of a Unix socket, and
// its file mode bits do not restrict who connects.
const pprofUnixSupported = false

func listenUnixPrivate(string) (net.Listener, error) {
	return nil, errors.New("profiles are not served on Windows")
}

func unixPeerUID(net.Conn) (uint32, error) {
	return 0, errors.New("profiles are not served on Windows")
}
