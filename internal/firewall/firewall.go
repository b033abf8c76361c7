package firewall

// Firewall addresses our table in one network namespace. The zero value
// means the namespace of the calling OS thread; use InNetNS for another.
type Firewall struct {
	netnsFD int
}

// InNetNS returns a Firewall acting in the network namespace referred to by
// fd (an open /run/netns/NAME or /proc/PID/ns/net). The caller keeps fd open
// for as long as the Firewall is used. No thread of the calling process
// changes namespace: each call opens its netlink socket inside fd's
// namespace.
func InNetNS(fd int) *Firewall {
	return &Firewall{netnsFD: fd}
}

var current Firewall

// Apply atomically replaces our table with the content described by spec.
// It is idempotent: applying the same spec twice leaves exactly one copy of
// every object.
func Apply(spec Spec) error { return current.Apply(spec) }

// Delete removes the named table (DefaultTable when empty) if it exists.
// A missing table is not an error.
func Delete(table string) error { return current.Delete(table) }

// Inspect reports what the named table (DefaultTable when empty) holds.
// A missing table gives State{Present: false} and no error.
func Inspect(table string) (State, error) { return current.Inspect(table) }

// Drifted reports whether the kernel's table differs from what Apply(spec)
// would build (chains, rules, sets and set elements; counters excluded), so
// that a reconcile loop rebuilds only on real drift.
func Drifted(spec Spec) (bool, error) { return current.Drifted(spec) }

// DetectForeign reads (never changes) the namespace's netfilter state and
// reports other owners' rules that affect our traffic, for a log hint.
func DetectForeign() (Foreign, error) { return current.DetectForeign() }
