package ipc

import (
	"fmt"
	"slices"
	"strings"
)

// Well-known SIDs of the Windows access rule.
const (
	sidLocalSystem    = "S-1-5-18"
	sidAdministrators = "S-1-5-32-544"
)

// PipeSDDL is the security descriptor of the daemon's named pipe, the
// Windows form of the socket's 0660 root:zlayer: a protected DACL (nothing
// inherited) giving SYSTEM and Administrators full control, and, when
// extraSID is not empty, that account or group generic read and write,
// which is what opening the pipe as a client takes. Generic write includes
// the right to create pipe instances; that account drives the overlay
// anyway, so it is trusted with that (Docker's engine pipe makes the same
// grant to docker-users).
func PipeSDDL(extraSID string) (string, error) {
	sddl := "D:P(A;;GA;;;SY)(A;;GA;;;BA)"
	if extraSID == "" {
		return sddl, nil
	}
	if !isSIDString(extraSID) {
		return "", fmt.Errorf("%q is not a SID string (S-1-...)", extraSID)
	}
	if extraSID == sidLocalSystem || extraSID == sidAdministrators {
		return sddl, nil
	}
	return sddl + "(A;;GRGW;;;" + extraSID + ")", nil
}

// isSIDString accepts the textual form of a SID, S-1-<authority>-<sub>...,
// and nothing that could smuggle more ACEs into an SDDL string.
func isSIDString(s string) bool {
	parts := strings.Split(s, "-")
	if len(parts) < 3 || parts[0] != "S" || parts[1] != "1" {
		return false
	}
	for _, p := range parts[2:] {
		if p == "" || len(p) > 20 {
			return false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// pipeAllowedSIDs is who may connect: SYSTEM, Administrators and extraSID.
func pipeAllowedSIDs(extraSID string) []string {
	sids := []string{sidLocalSystem, sidAdministrators}
	if extraSID != "" && !slices.Contains(sids, extraSID) {
		sids = append(sids, extraSID)
	}
	return sids
}

// allowSIDs applies the pipe's rule to a caller's token: its user SID, or
// one of its enabled groups (a group an elevation-filtered token holds only
// for deny is not passed in), must be allowed.
func allowSIDs(allowed []string, user string, enabledGroups []string) bool {
	if slices.Contains(allowed, user) {
		return true
	}
	for _, g := range enabledGroups {
		if slices.Contains(allowed, g) {
			return true
		}
	}
	return false
}
