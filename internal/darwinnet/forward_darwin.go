package darwinnet

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// forwardingKnobs turn routing between interfaces on. Guests of the
// overlay (the VM's guest_managed peers) send through the node to other
// nodes: their packets come in on the utun interface and go out on it
// again, which the kernel only does with forwarding on.
var forwardingKnobs = []string{"net.inet.ip.forwarding", "net.inet6.ip6.forwarding"}

// EnableForwarding sets the forwarding sysctls to 1 and returns the ones
// it changed. It matches linuxnet.EnableForwarding, for engine.Config.
func EnableForwarding() (changed []string, err error) {
	for _, knob := range forwardingKnobs {
		cur, err := unix.SysctlUint32(knob)
		if err != nil {
			return changed, fmt.Errorf("enable forwarding: read %s: %w", knob, err)
		}
		if cur == 1 {
			continue
		}
		if err := sysctlSetUint32(knob, 1); err != nil {
			return changed, fmt.Errorf("enable forwarding: set %s=1: %w", knob, err)
		}
		changed = append(changed, knob)
	}
	return changed, nil
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
