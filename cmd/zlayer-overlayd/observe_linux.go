package main

import (
	"errors"
	"net"

	"github.com/vishvananda/netlink"
)

// tcpPeerUIDSupported: Linux reports the owner of a TCP socket (sock_diag).
const tcpPeerUIDSupported = true

// tcpPeerUID is the uid that owns the client's end of a loopback TCP
// connection: sock_diag looked up by the connection's two addresses, seen
// from the client's side. The client's socket exists while the connection
// is open, which it is while we look.
func tcpPeerUID(c net.Conn) (uint32, error) {
	s, err := netlink.SocketGet(c.RemoteAddr(), c.LocalAddr())
	if err != nil {
		return 0, err
	}
	if s == nil {
		return 0, errors.New("the client's socket is gone")
	}
	return s.UID, nil
}
