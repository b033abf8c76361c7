package darwinnet

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// forwardingKnobs turn routing between interfaces on, per address
// family. Guests of the overlay (the VM's guest_managed peers) send
// through the node to other nodes: their packets come in on the utun
// interface and go out on it again, which the kernel only does with
// forwarding on.
const (
	knobIPv4 = "net.inet.ip.forwarding"
	knobIPv6 = "net.inet6.ip6.forwarding"
)

// EnableForwarding sets the forwarding sysctls of the families need
// reports to 1 and returns the ones it changed. It matches
// engine.Config.EnableForwarding; unlike Linux it puts nothing back (the
// sysctls reset at boot).
func EnableForwarding(need func() (v4, v6 bool)) (changed, restored []string, err error) {
	v4, v6 := need()
	var knobs []string
	if v4 {
		knobs = append(knobs, knobIPv4)
	}
	if v6 {
		knobs = append(knobs, knobIPv6)
	}
	for _, knob := range knobs {
		cur, err := unix.SysctlUint32(knob)
		if err != nil {
			return changed, nil, fmt.Errorf("enable forwarding: read %s: %w", knob, err)
		}
		if cur == 1 {
			continue
		}
		if err := sysctlSetUint32(knob, 1); err != nil {
			return changed, nil, fmt.Errorf("enable forwarding: set %s=1: %w", knob, err)
		}
		changed = append(changed, knob)
	}
	return changed, nil, nil
}

// sysctlSetUint32 writes a sysctl by name. x/sys/unix reads sysctls on
// darwin but cannot write them, so this calls sysctlbyname(2) directly.
func sysctlSetUint32(name string, v uint32) error {
	b, err := unix.ByteSliceFromString(name)
	if err != nil {
		return err
	}
	_, _, errno := unix.Syscall6(unix.SYS_SYSCTLBYNAME,
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(name)),
		0, 0,
		uintptr(unsafe.Pointer(&v)), unsafe.Sizeof(v))
	if errno != 0 {
		return errno
	}
	return nil
}
