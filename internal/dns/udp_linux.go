//go:build linux

package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// batchConn is what ipv4.PacketConn and ipv6.PacketConn share (their
// Message types are the same type).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// batchIO reads and sends up to udpBatchSize datagrams per system call
// (recvmmsg, sendmmsg). Our sockets are bound to one address each (never
// a wildcard), so answers leave from the address the query came to
// without an IP_PKTINFO control message; queries are read with one, for
// the interface they arrived on.
type batchIO struct {
	conn batchConn
	udp  *net.UDPConn
	rms  []ipv4.Message
	wms  []ipv4.Message
	bufs [][]byte // one-element Buffers of rms and wms, allocated once
}

func newDatagramIO(conn *net.UDPConn) datagramIO {
	var bc batchConn = ipv4.NewPacketConn(conn)
	if a, ok := conn.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		bc = ipv6.NewPacketConn(conn)
	}
	b := &batchIO{
		conn: bc,
		udp:  conn,
		rms:  make([]ipv4.Message, udpBatchSize),
		wms:  make([]ipv4.Message, udpBatchSize),
		bufs: make([][]byte, 2*udpBatchSize),
	}
	for i := range udpBatchSize {
		b.rms[i].Buffers = b.bufs[i : i+1 : i+1]
		b.wms[i].Buffers = b.bufs[udpBatchSize+i : udpBatchSize+i+1 : udpBatchSize+i+1]
	}
	return b
}

func (b *batchIO) read(ub *udpBatch) (int, error) {
	ms := b.rms[:min(len(b.rms), len(ub.in))]
	for i := range ms {
		ms[i].Buffers[0] = ub.in[i].buf[:cap(ub.in[i].buf)]
		ms[i].OOB = ub.in[i].oob[:cap(ub.in[i].oob)]
	}
	n, err := b.conn.ReadBatch(ms, 0)
	if err != nil {
		return 0, err
	}
	for i := range n {
		d := &ub.in[i]
		d.n = ms[i].N
		d.peer = ms[i].Addr
		d.ifindex = arrivalIfindex(ms[i].OOB[:ms[i].NN])
		d.from = netip.AddrPort{}
		if a, ok := ms[i].Addr.(*net.UDPAddr); ok {
			d.from = a.AddrPort()
		}
	}
	return n, nil
}

func (b *batchIO) write(ub *udpBatch) error {
	var errs []error
	for out := ub.out; len(out) > 0; {
		ms := b.wms[:min(len(out), len(b.wms))]
		for i := range ms {
			o := &out[i]
			ms[i].Buffers[0] = o.b
			ms[i].Addr = o.peer
			if ms[i].Addr == nil {
				ms[i].Addr = net.UDPAddrFromAddrPort(o.to)
			}
		}
		n, err := b.conn.WriteBatch(ms, 0)
		if err != nil || n <= 0 {
			// The kernel refused the datagram at out[n]; send the rest.
			errs = append(errs, fmt.Errorf("sending to %v: %w", out[max(n, 0)].to, err))
			n = max(n, 0) + 1
		}
		out = out[min(n, len(out)):]
	}
	return errors.Join(errs...)
}
