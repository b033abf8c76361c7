//go:build !linux

package wg

import (
	"fmt"
	"runtime"
)

// probeKernel reports why there is no kernel backend: wgctrl can configure
// kernel WireGuard elsewhere, but creating the link is platform-specific
// and this package only does it on Linux.
func probeKernel() (Backend, error) {
	return nil, fmt.Errorf("the kernel wireguard backend is only supported on linux, not %s", runtime.GOOS)
}
