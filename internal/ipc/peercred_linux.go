package ipc

import (
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Caller is who is on the other end of a connection.
type Caller struct {
	UID, GID uint32
	PID      int32
	Groups   []uint32 // supplementary groups, when they could be read
}

func (c Caller) String() string {
	return fmt.Sprintf("pid %d uid %d gid %d", c.PID, c.UID, c.GID)
}

// PeerCaller reads the credentials of the process on the other end: for
// the daemon, the process that connected; for a client, the daemon that
// listened. The kernel took them at connect (listen) time, so the peer
// cannot forge them: SO_PEERCRED for the ids and pid, SO_PEERGROUPS for
// the supplementary groups, both from the socket itself. (Reading
// /proc/<pid>/status instead would ask whichever process holds that pid
// now, which need not be the one that connected.)
func PeerCaller(c net.Conn) (Caller, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Caller{}, fmt.Errorf("peer credentials need a unix socket, got %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *unix.Ucred
	var groups []uint32
	var credErr, groupsErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr == nil {
			groups, groupsErr = peerGroups(int(fd))
		}
	}); err != nil {
		return Caller{}, err
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	if groupsErr != nil {
		// A kernel older than 4.13: without the groups a caller can
		// still be admitted by its uid or primary gid.
		groups = nil
	}
	return Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Groups: groups}, nil
}

// peerGroups reads SO_PEERGROUPS, which x/sys/unix has no wrapper for. The
// kernel answers ERANGE with the size it needs when the buffer is short.
func peerGroups(fd int) ([]uint32, error) {
	n := 64
	for range 4 {
		buf := make([]uint32, n)
		size := uint32(4 * n)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && int(size/4) > n:
			n = int(size / 4)
			continue
		case errno != 0:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", errno)
		}
		return buf[:size/4], nil
	}
	return nil, fmt.Errorf("SO_PEERGROUPS: the group list kept growing")
}
