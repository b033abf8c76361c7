package ipc

import (
	"fmt"
	"net"
	"strings"

	"golang.org/x/sys/windows"
)

// Caller is who is on the other end of the pipe: the client process and
// the SIDs of its token.
type Caller struct {
	PID  uint32
	User string // SID of the token's user
	Name string // DOMAIN\user, when it could be resolved
	// Groups are the token's enabled group SIDs; a group an
	// elevation-filtered token holds only for deny is not among them.
	Groups []string
}

func (c Caller) String() string {
	who := c.User
	if c.Name != "" {
		who = c.Name + " (" + c.User + ")"
	}
	return fmt.Sprintf("pid %d user %s", c.PID, who)
}

// PeerCaller identifies the process that opened the pipe and reads its
// token. The PID comes from the pipe (GetNamedPipeClientProcessId); the
// pipe's DACL has already vetted the same token when the client opened
// it, so this check is the second of two, as on Unix.
func PeerCaller(c net.Conn) (Caller, error) {
	fc, ok := c.(interface{ Fd() uintptr })
	if !ok {
		return Caller{}, fmt.Errorf("peer identity needs a named pipe, got %T", c)
	}
	var pid uint32
	if err := windows.GetNamedPipeClientProcessId(windows.Handle(fc.Fd()), &pid); err != nil {
		return Caller{}, fmt.Errorf("GetNamedPipeClientProcessId: %w", err)
	}
	p, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, pid)
	if err != nil {
		return Caller{}, fmt.Errorf("open client process %d: %w", pid, err)
	}
	defer windows.CloseHandle(p)
	var tok windows.Token
	if err := windows.OpenProcessToken(p, windows.TOKEN_QUERY, &tok); err != nil {
		return Caller{}, fmt.Errorf("open the token of client process %d: %w", pid, err)
	}
	defer tok.Close()
	u, err := tok.GetTokenUser()
	if err != nil {
		return Caller{}, fmt.Errorf("read the user of client process %d: %w", pid, err)
	}
	caller := Caller{PID: pid, User: u.User.Sid.String()}
	if acct, dom, _, err := u.User.Sid.LookupAccount(""); err == nil {
		caller.Name = acct
		if dom != "" {
			caller.Name = dom + `\` + acct
		}
	}
	gs, err := tok.GetTokenGroups()
	if err != nil {
		return Caller{}, fmt.Errorf("read the groups of client process %d: %w", pid, err)
	}
	for _, g := range gs.AllGroups() {
		if g.Attributes&windows.SE_GROUP_ENABLED != 0 && g.Attributes&windows.SE_GROUP_USE_FOR_DENY_ONLY == 0 {
			caller.Groups = append(caller.Groups, g.Sid.String())
		}
	}
	return caller, nil
}

// Policy decides which callers may use the daemon: SYSTEM, elevated
// administrators and the configured account or group (see Access).
type Policy struct {
	Allowed []string // SIDs
	Account string   // the extra account's name, for messages
}

// Privileged reports whether c is SYSTEM or an elevated administrator:
// the callers that may ask for what holds private keys (a backup of the
// state file). The --pipe-account drives the overlay but is not
// privileged.
func (p Policy) Privileged(c Caller) bool {
	const system, administrators = "S-1-5-18", "S-1-5-32-544"
	return allowSIDs([]string{system, administrators}, c.User, c.Groups)
}

// Allow returns nil when c may connect, or an error that says why not.
func (p Policy) Allow(c Caller) error {
	if allowSIDs(p.Allowed, c.User, c.Groups) {
		return nil
	}
	who := []string{"SYSTEM", "an elevated administrator"}
	if p.Account != "" {
		who = append(who, p.Account)
	}
	return fmt.Errorf("permission denied: %s is not %s; run from an elevated prompt, or start the daemon with --pipe-account naming the account that drives it", c, strings.Join(who, " or "))
}
