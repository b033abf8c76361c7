//go:build !linux

package dns

import "net"

// arrivalKnown: other platforms do not report the arrival interface of
// datagrams through the reads we use, so queries are answered whatever
// interface they came in on. macOS and Windows nodes have no bridges;
// Windows receives with the strong host model.
const arrivalKnown = false

// oobSize: no control messages are read.
const oobSize = 0

func enableArrival(*net.UDPConn) error { return nil }

func newArrival(s *Server, _ *net.UDPConn) (*arrival, error) { return &arrival{s: s}, nil }

func readOne(conn *net.UDPConn, d *inDatagram) error {
	n, from, err := conn.ReadFromUDPAddrPort(d.buf[:cap(d.buf)])
	if err != nil {
		return err
	}
	d.n, d.from, d.peer = n, from, nil
	return nil
}
