package ipc

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

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

// PeerCaller reads the credentials of the process that connected (SO_PEERCRED,
// taken by the kernel at connect time, so the caller cannot forge them).
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
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	caller := Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
	caller.Groups = procGroups(cred.Pid)
	return caller, nil
}

// procGroups reads the supplementary groups of pid. It is only consulted
// when the primary ids do not already grant access, and a process that
// exits in between simply loses that chance.
func procGroups(pid int32) []uint32 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Groups:")
		if !ok {
			continue
		}
		var gs []uint32
		for _, f := range strings.Fields(rest) {
			if g, err := strconv.ParseUint(f, 10, 32); err == nil {
				gs = append(gs, uint32(g))
			}
		}
		return gs
	}
	return nil
}
