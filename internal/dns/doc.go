// Package dns is the node's embedded DNS server for service discovery.
//
// It is authoritative for the cluster zone (SOA, NS, A, AAAA) and for the
// PTR records of every address it holds, and forwards every other name to
// the host's real resolvers with a timeout per upstream, TCP retry of
// truncated answers, a bounded TTL-honouring cache and coalescing of
// identical queries. It is not an open resolver: it answers only queries
// that arrive on loopback or an interface Config.Interfaces names (on
// Linux the kernel reports each datagram's arrival interface; TCP clients
// are placed by the route to them), and forwarding is offered only to the
// clients Config.AllowRecursion accepts among those. UDP answers never
// exceed 1,232 bytes, whatever buffer size a query claims.
//
// Queries read an immutable snapshot of the zone through an atomic
// pointer and never wait for a lock, for writers or for upstream traffic:
// a slow or dead upstream delays only the forwarded names.
//
// UDP is served by our own read loop (udp.go): batches of datagrams per
// system call, zone answers built on the reading goroutine from records
// the snapshot keeps packed for the wire (fastpath.go), forwards handed to
// goroutines of their own. It answers every datagram it accepts exactly as
// miekg/dns's server calling ServeDNS did, byte for byte (the fuzz
// targets check it). TCP is served by miekg/dns.
//
// Listeners are explicit addresses (loopback with the --dns-port, bridge
// and overlay gateways on port 53), never a wildcard.
//
// SRV records are not served: the protocol carries no service ports.
package dns
