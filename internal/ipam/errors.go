package ipam

import "errors"

// Sentinel errors. Every error returned by this package wraps one of them (use
// errors.Is) and its message names the address or prefix involved.
var (
	// ErrExhausted: nothing free is left in the pool, cluster or port band.
	ErrExhausted = errors.New("address space exhausted")
	// ErrOutOfRange: the address or prefix does not lie inside the pool's
	// prefix, or an index or prefix length is outside what the parent allows.
	ErrOutOfRange = errors.New("out of range")
	// ErrInUse: the address or port is already allocated.
	ErrInUse = errors.New("already in use")
	// ErrNotAllocated: Release of an address this pool never handed out.
	ErrNotAllocated = errors.New("not allocated")
	// ErrReserved: the address is reserved (explicitly, or because it is the
	// network or broadcast address of the prefix) and is never handed out.
	ErrReserved = errors.New("reserved")
	// ErrNotReserved: Unreserve of an address that is not reserved.
	ErrNotReserved = errors.New("not reserved")
	// ErrExcluded: the address lies in a sub-range excluded from the pool.
	ErrExcluded = errors.New("excluded")
	// ErrFamily: an IPv4 address or prefix was used with an IPv6 one, or the
	// other way round.
	ErrFamily = errors.New("address family mismatch")
)
