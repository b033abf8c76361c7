//go:build !linux

package dns

import "net"

// newDatagramIO reads and sends one datagram per system call: the
// batching system calls (recvmmsg, sendmmsg) are Linux's.
func newDatagramIO(conn *net.UDPConn) datagramIO { return singleIO{conn} }
