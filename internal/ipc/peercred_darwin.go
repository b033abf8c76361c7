package ipc

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Caller is who is on the other end of a connection.
type Caller struct {
	UID, GID uint32
	PID      int32
	Groups   []uint32
}

func (c Caller) String() string { return fmt.Sprintf("uid %d gid %d", c.UID, c.GID) }

// PeerCaller reads the credentials of the connecting process (LOCAL_PEERCRED).
func PeerCaller(c net.Conn) (Caller, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Caller{}, fmt.Errorf("peer credentials need a unix socket, got %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var x *unix.Xucred
	var xErr error
	if err := raw.Control(func(fd uintptr) {
		x, xErr = unix.GetsockoptXucred(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if xErr != nil {
		return Caller{}, fmt.Errorf("LOCAL_PEERCRED: %w", xErr)
	}
	caller := Caller{UID: x.Uid}
	for i := 0; i < int(x.Ngroups) && i < len(x.Groups); i++ {
		if i == 0 {
			caller.GID = x.Groups[0]
		}
		caller.Groups = append(caller.Groups, x.Groups[i])
	}
	return caller, nil
}
