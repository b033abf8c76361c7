//go:build !linux

package wg

import (
	"fmt"
	"io"
	"log/slog"
)

// DataplaneCommandName is the argument that makes the daemon's executable
// run a data plane instead of the daemon (Linux only).
const DataplaneCommandName = "wg-dataplane"

// DataplaneConfig configures the detached data plane (Linux only).
type DataplaneConfig struct {
	Command   []string
	Env       []string
	StatePath string
	LogDir    string
	MaxProcs  int
	Logger    *slog.Logger
}

// NewDataplaneBackend is the in-process userspace backend on this
// platform: utun and Wintun devices belong to the process that made them.
func NewDataplaneBackend(DataplaneConfig) (Backend, error) { return newUserspaceBackend() }

// RunDataplane is not available on this platform.
func RunDataplane(_ []string, stderr io.Writer) int {
	fmt.Fprintln(stderr, "zlayer-overlayd: the detached WireGuard data plane runs on Linux only")
	return 2
}
