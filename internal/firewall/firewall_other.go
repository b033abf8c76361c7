//go:build !linux

package firewall

import (
	"fmt"
	"runtime"
)

// errUnsupported explains why nothing works here: nftables is a Linux
// facility, and the library we use speaks Linux netlink only.
var errUnsupported = fmt.Errorf("firewall: nftables is Linux-only; zlayer-overlayd cannot manage firewall rules on %s", runtime.GOOS)

// Apply fails: nftables does not exist on this platform.
func (f *Firewall) Apply(spec Spec) error { return errUnsupported }

// Delete fails: nftables does not exist on this platform.
func (f *Firewall) Delete(table string) error { return errUnsupported }

// Inspect fails: nftables does not exist on this platform.
func (f *Firewall) Inspect(table string) (State, error) { return State{}, errUnsupported }

// Drifted fails: nftables does not exist on this platform.
func (f *Firewall) Drifted(spec Spec) (bool, error) { return false, errUnsupported }

// DetectForeign fails: nftables does not exist on this platform.
func (f *Firewall) DetectForeign() (Foreign, error) { return Foreign{}, errUnsupported }
