// Package ipam allocates overlay addresses, node slices, service subnets and
// dedicated WireGuard ports. It is pure: no I/O, no clocks, no randomness, so
// every decision is reproducible from its inputs and every type can be rebuilt
// from a persisted live set. IPv4 and IPv6 are handled by the same code.
//
// # Usable addresses
//
// A [Pool] never hands out an address that the network would misread:
//
//   - IPv4 prefixes up to /30: the network and broadcast addresses are never
//     handed out.
//   - IPv4 /31: both addresses are usable (point-to-point link, RFC 3021).
//   - IPv4 /32: the single address is usable.
//   - IPv6 prefixes up to /126: the network address (the subnet-router anycast
//     address, RFC 4291 §2.6.1) is never handed out; the all-ones address is an
//     ordinary address because IPv6 has no broadcast.
//   - IPv6 /127: both addresses are usable (RFC 6164).
//   - IPv6 /128: the single address is usable.
//
// [FirstUsable] follows the same rules; it is the gateway of a service subnet
// and the node IP of a node slice.
//
// # Placement
//
// Node slices and service subnets are placed the way the reference
// implementation places them (FNV-1a 64 over a stable identity, modulo the
// number of aligned slots, then linear probing), so a cluster that mixes our
// nodes with reference nodes computes the same slots. Unlike the reference,
// probing skips every slot that overlaps any taken prefix, not just slots equal
// to one, and it jumps over a taken prefix in one step instead of probing each
// slot inside it, so it stays fast in huge IPv6 spaces.
package ipam
