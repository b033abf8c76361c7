package darwinnet

import (
	"net"
	"strings"
)

// kindOf names an interface's kind in linuxnet's vocabulary, from what
// macOS exposes: its driver's name prefix and flags.
func kindOf(name string, flags net.Flags) string {
	switch {
	case flags&net.FlagLoopback != 0:
		return "loopback"
	case strings.HasPrefix(name, "utun"):
		return "tun"
	case strings.HasPrefix(name, "bridge"):
		return "bridge"
	}
	return "device"
}
