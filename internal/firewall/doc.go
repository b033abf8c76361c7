// Package firewall owns zlayer-overlayd's nftables table: masquerade for
// container egress, isolation of containers from everything but the
// overlay, an input rule that keeps our DNS listeners to our own
// interfaces, and TCP MSS clamping on the devices we own.
//
// Ownership model. Everything we install lives in one table of the inet
// family (default "inet zlayer_overlay"). We own that table completely and
// nothing outside it: Apply, Delete, Inspect and Drifted only ever address
// that table by name, and DetectForeign only reads. Coexistence with Docker,
// firewalld or an administrator's ruleset therefore needs no ordering
// tricks: our base chains have policy accept and drop only traffic headed
// into our own bridges and container links (and DNS queries to our own
// listeners) that does not come from the overlay, the same bridge or a
// container's link; every other packet passes our chains as if they were
// not there. A drop in any base chain is final in nftables, so no other
// table can re-open what Isolate closes; an accept here does not override
// another table's drop.
//
// Isolation. Spec.Isolate closes containers to the underlay: a bridge is
// entered from the global overlay device, its service's dedicated device,
// itself, or a container's join_global link; a container link from the
// global overlay device or another container link; replies to connections
// a container opened always pass. Another service's bridge is not a way
// in: a container reaches beyond its service through its join_global link,
// as in the reference's model.
//
// Atomicity. Apply builds the whole table in ONE netlink batch: "add table"
// (a no-op when it exists), "delete table", "add table", then every set,
// element, chain and rule. The kernel commits a batch all or nothing, so a
// packet (or an `nft list` reader) sees either the previous table or the new
// one, never a half-built table and never two copies; a crash mid-Apply
// leaves the previous table in place. This is also why repeated Apply calls
// are idempotent and why stale rules from an earlier run cannot survive.
//
// Connections. Each call opens its own netlink sockets and closes them
// before returning (no Conn is shared or cached), so calls are safe from
// any goroutine and a Firewall needs no shutdown.
// Concurrent Apply calls are each atomic; the last to commit wins. The
// package-level functions act on the network namespace of the calling OS
// thread (the daemon's host namespace, since Go threads all start there);
// InNetNS addresses another namespace by file descriptor without touching
// any thread's namespace.
//
// Docker. When Docker's iptables rules are present with FORWARD policy DROP,
// traffic between our bridges and the overlay is dropped by Docker's chain
// no matter what our chain accepts (each base chain on a hook gets its own
// verdict). The fix is an accept rule in Docker's DOCKER-USER chain, which
// we deliberately do not add because we never edit tables we do not own;
// DetectForeign finds that situation so the daemon can log Foreign.Hints.
//
// The package is Linux-only (github.com/google/nftables speaks Linux
// netlink); on other platforms every operation returns an error naming the
// platform.
package firewall
