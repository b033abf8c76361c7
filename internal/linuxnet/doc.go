// Package linuxnet owns the kernel side of the node's container network plane on Linux:
// per-service bridges, veth pairs wired into container network namespaces, addresses,
// routes and the few sysctls the overlay needs.
//
// Everything is done through rtnetlink (github.com/vishvananda/netlink). A Net talks to the
// network namespace it was created in through one long-lived netlink handle; a container's
// namespace is reached through a short-lived handle opened on its namespace file, so no
// goroutine of the caller ever runs with its OS thread switched into a container.
//
// Operations are idempotent so the engine can reconcile the kernel to its stored desired
// state after a restart: existing bridges are adopted without disturbing their ports,
// addresses and routes are replaced rather than added, and missing objects on delete are not
// errors. Attach rolls back every step it already took when a later one fails.
//
// On platforms other than Linux every operation returns an error naming the platform; the
// types and the rules the macOS and Windows implementations share (portable.go) work everywhere.
package linuxnet
