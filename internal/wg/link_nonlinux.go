//go:build darwin || windows || freebsd || openbsd

package wg

import (
	"fmt"
	"net"
)

// checkLinkFree refuses a name that is already taken by an interface. For
// the userspace backend no existing interface can be ours: its TUN dies
// with the process that made it.
func checkLinkFree(name string) error {
	if _, err := net.InterfaceByName(name); err == nil {
		return fmt.Errorf("an interface named %q already exists and is not ours; refusing to touch it (choose another name)", name)
	}
	return nil
}

// setLinkLabel fails: only Linux links carry a label, and only the Linux
// data plane process asks for one.
func setLinkLabel(name, _ string) error {
	return fmt.Errorf("labelling interface %q: interface labels are a Linux feature", name)
}
