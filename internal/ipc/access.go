package ipc

// Access says who, besides the administrators of the machine, may use the
// daemon's control channel.
//
// On Unix that is group zlayer (SocketGroup): the socket is 0660
// root:zlayer and callers' credentials are checked against the same rule.
// On Windows the named pipe's DACL grants SYSTEM, Administrators and one
// more account or group (PipeAccount, else group zlayer when it exists),
// and callers' tokens are checked against the same rule.
type Access struct {
	// PipeAccount is, on Windows, the account or group allowed to open the
	// pipe besides SYSTEM and Administrators: a name ("ZLAYER\svc-zlayer",
	// "NT SERVICE\ZLayerDaemon") or a SID string. Empty means group zlayer
	// when it exists, else nobody else. Unix ignores it.
	PipeAccount string
}
