//go:build linux

package dns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// arrivalKnown: on Linux every datagram read reports the interface it
// arrived on (IP_PKTINFO, IPV6_PKTINFO), and TCP clients are placed by a
// route lookup in the listener's namespace.
const arrivalKnown = true

// oobSize holds one IPv4 or IPv6 packet-info control message.
var oobSize = unix.CmsgSpace(unix.SizeofInet6Pktinfo)

// enableArrival asks the kernel to report each datagram's arrival
// interface.
func enableArrival(conn *net.UDPConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	v6 := conn.LocalAddr().(*net.UDPAddr).IP.To4() == nil
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("dns: asking for the arrival interface of queries: %w", serr)
	}
	return nil
}

// arrivalIfindex is the interface index of a packet-info control message
// in oob, or 0 when there is none (then the query is not answered).
func arrivalIfindex(oob []byte) int32 {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			return int32(binary.NativeEndian.Uint32(data)) // struct in_pktinfo starts with ipi_ifindex
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			return int32(binary.NativeEndian.Uint32(data[16:])) // after the 16-byte address
		}
		oob = rest
	}
	return 0
}

// newArrival makes the arrival check of a listener whose UDP socket is
// conn. Interfaces are named, and routes looked up, in the namespace of
// that socket, which need not be the calling thread's.
func newArrival(s *Server, conn *net.UDPConn) (*arrival, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	rt := &socketRoutes{rc: rc}
	a := &arrival{s: s, route: rt.lookup, close: rt.close}
	a.ifname = func(ifindex int32) (name string, loopback bool, err error) {
		cerr := rc.Control(func(fd uintptr) {
			var ifr *unix.Ifreq
			if ifr, err = unix.NewIfreq(""); err != nil {
				return
			}
			ifr.SetUint32(uint32(ifindex))
			if err = unix.IoctlIfreq(int(fd), unix.SIOCGIFNAME, ifr); err != nil {
				return
			}
			name = ifr.Name()
			if err = unix.IoctlIfreq(int(fd), unix.SIOCGIFFLAGS, ifr); err != nil {
				return
			}
			loopback = ifr.Uint16()&unix.IFF_LOOPBACK != 0
		})
		if cerr != nil {
			return "", false, cerr
		}
		return name, loopback, err
	}
	return a, nil
}

// socketRoutes looks routes up in a socket's network namespace over a
// netlink socket opened there on first use (TCP queries are rare).
type socketRoutes struct {
	rc syscall.RawConn
	mu sync.Mutex
	h  *netlink.Handle
}

func (r *socketRoutes) lookup(a netip.Addr) (int32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		h, err := r.open()
		if err != nil {
			return 0, err
		}
		r.h = h
	}
	routes, err := r.h.RouteGet(a.AsSlice())
	if err != nil {
		return 0, err
	}
	if len(routes) == 0 {
		return 0, errors.New("no route")
	}
	return int32(routes[0].LinkIndex), nil
}

// open returns a netlink handle in the socket's namespace. Entering
// another namespace needs CAP_SYS_ADMIN, and naming the socket's needs
// CAP_NET_ADMIN; without them the socket can only be in ours.
func (r *socketRoutes) open() (*netlink.Handle, error) {
	nsfd := -1
	var ioerr error
	if err := r.rc.Control(func(fd uintptr) { nsfd, ioerr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS) }); err != nil {
		return nil, err
	}
	if ioerr != nil {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	defer unix.Close(nsfd)
	var sock, self unix.Stat_t
	if unix.Fstat(nsfd, &sock) == nil && unix.Stat("/proc/thread-self/ns/net", &self) == nil && sock.Ino == self.Ino && sock.Dev == self.Dev {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	return netlink.NewHandleAt(netns.NsHandle(nsfd), unix.NETLINK_ROUTE)
}

func (r *socketRoutes) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h != nil {
		r.h.Close()
		r.h = nil
	}
}

// readOne reads one datagram with its control messages (the portable
// datagramIO, used on Linux only by tests).
func readOne(conn *net.UDPConn, d *inDatagram) error {
	n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(d.buf[:cap(d.buf)], d.oob[:cap(d.oob)])
	if err != nil {
		return err
	}
	d.n, d.from, d.peer, d.ifindex = n, from, nil, arrivalIfindex(d.oob[:oobn])
	return nil
}
