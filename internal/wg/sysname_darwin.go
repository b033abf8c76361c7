package wg

import (
	"fmt"
	"os"
	"path/filepath"
)

// publishSystemName records which utunN the kernel gave the device opened
// as name, for SystemName (the darwin network package resolves every name
// through it), and writes /var/run/wireguard/NAME.name holding "utunN", the
// convention wg-quick established on macOS, so that operators and tools
// can find the interface of a device they know by its stable name.
func publishSystemName(name, system string) (func(), error) {
	path := filepath.Join(uapiDir, name+".name")
	if err := os.WriteFile(path, []byte(system+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("publish the interface name of %s (%s) in %s: %w", name, system, path, err)
	}
	forget := rememberSystemName(name, system)
	return func() {
		forget()
		os.Remove(path)
	}, nil
}
