package ipc

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/Microsoft/go-winio"
	"golang.org/x/sys/windows"
)

// SocketGroup is the local group whose members may use the pipe besides
// SYSTEM and Administrators, unless Access.PipeAccount names another
// account (the same group name as the Unix socket's).
const SocketGroup = "zlayer"

// Listen creates the daemon's named pipe with the default access (see
// Access).
func Listen(path string, log *slog.Logger) (net.Listener, error) { return Access{}.Listen(path, log) }

// Listen creates the daemon's named pipe at path (\\.\pipe\zlayer-overlayd)
// with the DACL of PipeSDDL for a's account. The pipe rejects remote
// clients. A pipe cannot outlive its server, so there is never a stale one
// to clear: if the name is taken, another daemon is serving it.
func (a Access) Listen(path string, log *slog.Logger) (net.Listener, error) {
	if log == nil {
		log = slog.Default()
	}
	sid, name, err := a.account(log)
	if err != nil {
		return nil, err
	}
	sddl, err := PipeSDDL(sid)
	if err != nil {
		return nil, err
	}
	ln, err := winio.ListenPipe(path, &winio.PipeConfig{
		SecurityDescriptor: sddl,
		InputBufferSize:    64 << 10,
		OutputBufferSize:   64 << 10,
	})
	if err != nil {
		timeout := 500 * time.Millisecond
		if c, derr := winio.DialPipe(path, &timeout); derr == nil {
			c.Close()
			return nil, fmt.Errorf("another zlayer-overlayd is serving %s", path)
		}
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if name != "" {
		log.Debug("pipe access granted to SYSTEM, Administrators and "+name, "path", path, "sid", sid)
	} else {
		log.Debug("pipe access granted to SYSTEM and Administrators only (group "+SocketGroup+" does not exist)", "path", path)
	}
	return ln, nil
}

// Policy is the pipe's rule applied to callers' tokens.
func (a Access) Policy() (Policy, error) {
	sid, name, err := a.account(nil)
	if err != nil {
		return Policy{}, err
	}
	return Policy{Allowed: pipeAllowedSIDs(sid), Account: name}, nil
}

// DefaultPolicy is the policy of the default access (group zlayer).
func DefaultPolicy() Policy {
	p, err := Access{}.Policy()
	if err != nil {
		return Policy{Allowed: pipeAllowedSIDs("")}
	}
	return p
}

// account resolves the extra account to its SID: PipeAccount, which must
// exist, else group zlayer if it exists, else none.
func (a Access) account(log *slog.Logger) (sid, name string, err error) {
	want := a.PipeAccount
	if want == "" {
		s, _, _, err := windows.LookupSID("", SocketGroup)
		if err != nil {
			if log != nil {
				log.Debug("group "+SocketGroup+" does not exist; the pipe is for SYSTEM and Administrators only", "err", err)
			}
			return "", "", nil
		}
		return s.String(), SocketGroup, nil
	}
	if isSIDString(want) {
		if _, err := windows.StringToSid(want); err != nil {
			return "", "", fmt.Errorf("pipe account %s: %w", want, err)
		}
		return want, want, nil
	}
	s, _, _, err := windows.LookupSID("", want)
	if err != nil {
		return "", "", fmt.Errorf("pipe account %q does not exist (%w); give an existing account or group, or a SID", want, err)
	}
	return s.String(), want, nil
}

// Dial connects to the daemon's pipe.
func Dial(path string, timeout time.Duration) (net.Conn, error) {
	c, err := winio.DialPipe(path, &timeout)
	if errors.Is(err, windows.ERROR_FILE_NOT_FOUND) {
		return nil, fmt.Errorf("no zlayer-overlayd is serving %s: %w", path, err)
	}
	return c, err
}
