package wg

import "sync"

// systemNames maps the name a userspace device was opened with to the name
// the operating system gave its interface. They differ only on darwin,
// where the kernel numbers utun interfaces itself; everything else in the
// daemon keeps using the stable name.
var systemNames sync.Map

// SystemName returns the interface name the operating system gave the
// userspace device this process opened as name: the same name on Linux and
// Windows, the kernel-assigned utunN on darwin. ok is false when this
// process has no open device of that name (a userspace interface never
// outlives the process that made it, so there is nothing else to find).
func SystemName(name string) (system string, ok bool) {
	v, ok := systemNames.Load(name)
	if !ok {
		return "", false
	}
	return v.(string), true
}

// rememberSystemName records the mapping and returns the function that
// forgets it.
func rememberSystemName(name, system string) func() {
	systemNames.Store(name, system)
	return func() { systemNames.CompareAndDelete(name, system) }
}
