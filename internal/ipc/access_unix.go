//go:build unix

package ipc

import (
	"log/slog"
	"net"
)

// Listen binds the Unix socket at path (see the package-level Listen).
func (Access) Listen(path string, log *slog.Logger) (net.Listener, error) { return Listen(path, log) }

// Policy is DefaultPolicy: on Unix access is group zlayer's.
func (Access) Policy() (Policy, error) { return DefaultPolicy(), nil }
