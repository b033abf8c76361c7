// Package nat finds the node's public (server-reflexive) WireGuard endpoint
// with STUN, classifies the NAT in front of it, and relays WireGuard
// traffic through a TURN server when no direct path works.
//
// The address that matters to peers is the mapping of the WireGuard socket
// itself, not of some other socket: a NAT maps every local port separately,
// and may map the same port differently per destination. So STUN does not
// get a socket of its own here. Bind wraps the conn.Bind that wireguard-go
// uses, sends Binding requests through the WireGuard listening socket, and
// takes the STUN answers out of the receive path before wireguard-go sees
// them. WireGuard messages start with a type of 1 to 4 followed by three
// zero bytes; STUN messages carry the magic cookie 0x2112A442 at offset 4
// and a length that matches the datagram exactly, which no WireGuard message
// can, so the two never get confused. The check costs a few byte compares
// per packet and filters wireguard-go's receive batches in place, leaving
// its batching and UDP offloads as they are.
//
// Discover asks one server (RFC 5389 retransmission, bounded by the
// context); Probe asks several in parallel and compares the answers to tell
// no NAT, an endpoint-independent mapping (peers can reach the node at the
// reflexive address) and an endpoint-dependent one (they cannot, without a
// relay). A Linux MASQUERADE router that keeps source ports is
// endpoint-independent for this purpose; one with --random is not.
//
// Relay (relay.go) keeps a TURN allocation (RFC 8656, pion/turn's client
// on a UDP socket of its own) for peers no direct path reaches: two nodes
// behind endpoint-dependent NATs, say. The Bind sends WireGuard packets for
// relayed endpoints through it and delivers what arrives through it with
// relayed endpoints, so WireGuard needs to know nothing of relays
// (relaybind.go has the details, and how a relayed peer is moved back to
// a direct path once one works).
//
// wireguard-go starts its route listener (which drops a peer's cached
// source address when the route to the peer moves to another interface)
// only for its own *conn.StdNetBind, so a device on a wrapped bind keeps
// sending from the cached source until the peer's next packet refreshes it.
package nat
