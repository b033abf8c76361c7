// Package dns is the node's embedded DNS server for service discovery.
//
// It is authoritative for the cluster zone (SOA, NS, A, AAAA) and for the
// PTR records of every address it holds, and forwards every other name to
// the host's real resolvers with a timeout per upstream, TCP retry of
// truncated answers, a bounded TTL-honouring cache and coalescing of
// identical queries. It is not an open resolver: forwarding is offered
// only to the clients Config.AllowRecursion accepts.
//
// Queries read an immutable snapshot of the zone through an atomic
// pointer and never wait for a lock, for writers or for upstream traffic:
// a slow or dead upstream delays only the forwarded names.
//
// Listeners are explicit addresses (loopback with the --dns-port, bridge
// and overlay gateways on port 53), never a wildcard.
//
// SRV records are not served: the protocol carries no service ports.
package dns
