//go:build !linux

package main

import (
	"errors"
	"net"
)

// tcpPeerUIDSupported: only Linux tells who owns the client's end of a TCP
// connection; elsewhere profiles are served on a Unix socket only.
const tcpPeerUIDSupported = false

func tcpPeerUID(net.Conn) (uint32, error) {
	return 0, errors.New("this platform cannot tell who owns a TCP connection")
}
