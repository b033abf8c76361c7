// Package chaos holds the suites that try to break zlayer-overlayd from the
// outside, the way an operator's worst day would: malformed and hostile
// input on the real socket, SIGKILLs at random points of a random workload
// against a multi-node lab, many concurrent clients under the race
// detector, and callers the daemon must refuse.
//
// Every suite drives the real binary (or, for the goroutine-leak check, the
// real ipc.Server and engine in-process) and judges it only by what an
// outside observer sees: protocol answers, `ip`, `nft`, `wg`, `dig` and
// `ping` run inside the node's namespaces. The package has no API; its
// tests are the product. `make test` runs the short versions, `make soak`
// the long ones (see docs/operations.md). They are Linux-only: they need
// network namespaces, SO_PEERCRED and the lab.
package chaos
