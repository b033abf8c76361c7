//go:build !(linux || darwin || windows || freebsd || openbsd)

package wg

import (
	"fmt"
	"runtime"
)

func newUserspaceBackend() (Backend, error) {
	return nil, fmt.Errorf("the userspace wireguard backend needs a TUN driver that wireguard-go supports (linux, darwin, windows, freebsd, openbsd), not %s", runtime.GOOS)
}
