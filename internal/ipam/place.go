package ipam

import (
	"fmt"
	"net/netip"
)

// FNV-1a 64-bit parameters, as the reference uses them.
const (
	fnvOffsetBasis = 0xcbf29ce484222325
	fnvPrime       = 0x100000001b3
)

// FNV1a64 hashes the concatenation of parts with 64-bit FNV-1a
// (xor-then-multiply). hash/fnv would do the same; a function over several
// parts avoids concatenating them first.
func FNV1a64(parts ...[]byte) uint64 {
	h := uint64(fnvOffsetBasis)
	for _, part := range parts {
		for _, b := range part {
			h ^= uint64(b)
			h *= fnvPrime
		}
	}
	return h
}

// serviceKeySeparator sits between the service and node names in the
// service subnet hash, exactly as in the reference.
const serviceKeySeparator = 0x1f

// PlaceNodeSlice places a node's slice of length bits in cluster the way the
// reference's NodeSliceAllocator does: start at FNV1a64(identity) modulo the
// number of slices, then probe linearly (wrapping), skipping every slice that
// overlaps any prefix in taken.
func PlaceNodeSlice(cluster netip.Prefix, bits int, identity string, taken []netip.Prefix) (netip.Prefix, error) {
	return place(cluster, bits, FNV1a64([]byte(identity)), taken, fmt.Sprintf("node %q", identity))
}

// PlaceServiceSubnet places the subnet of length bits for service on node the
// way the reference's ServiceSubnetRegistry does: FNV-1a over the service
// bytes, one 0x1f byte and the node bytes, then the same probing as
// PlaceNodeSlice.
func PlaceServiceSubnet(cluster netip.Prefix, bits int, service, node string, taken []netip.Prefix) (netip.Prefix, error) {
	h := FNV1a64([]byte(service), []byte{serviceKeySeparator}, []byte(node))
	return place(cluster, bits, h, taken, fmt.Sprintf("service %q on node %q", service, node))
}

// place probes slices start, start+1, ... (mod n). When a slice overlaps a
// taken prefix it jumps straight past the end of the merged run of taken
// prefixes: every slice in between overlaps it as well, so the result is what
// one-by-one probing would give, in at most about 2*len(taken) steps of
// O(log len(taken)) instead of up to n.
func place(cluster netip.Prefix, bits int, hash uint64, taken []netip.Prefix, what string) (netip.Prefix, error) {
	if err := checkSliceBits(cluster, bits); err != nil {
		return netip.Prefix{}, err
	}
	cluster = cluster.Masked()
	n := numSlices(cluster, bits)
	is4 := cluster.Addr().Is4()
	hostMask := lowMask(uint(maxBits(cluster) - bits))
	_, clusterLast := prefixRange(cluster)

	blockers := spansOf(taken, is4)

	idx := hash % n
	remaining := n
	for {
		cand := sliceAt(cluster, bits, idx)
		cf := u128FromAddr(cand.Addr())
		end, blocked := blockers.highestOverlapping(cf, cf.or(hostMask))
		if !blocked {
			return cand, nil
		}
		if clusterLast.less(end) {
			end = clusterLast
		}
		// Slices idx..j all overlap the blocker; j >= idx because the blocker
		// overlaps slice idx.
		j := sliceIndex(cluster, bits, end)
		step := n - idx // wrap to slice 0
		if j.less(u128From64(n - 1)) {
			step = j.lo + 1 - idx
		}
		if step >= remaining {
			return netip.Prefix{}, fmt.Errorf("%w: every /%d of %s overlaps a taken prefix, nowhere to place %s",
				ErrExhausted, bits, cluster, what)
		}
		remaining -= step
		idx += step
		if idx == n {
			idx = 0
		}
	}
}
