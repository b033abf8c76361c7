package ipam

import (
	"fmt"
	"math"
	"math/bits"
)

// PortBandSize is how many UDP ports a dedicated-overlay band holds, as in the
// reference (DEDICATED_PORT_BAND).
const PortBandSize = 256

// PortBand hands out the UDP listen ports of dedicated per-service WireGuard
// devices: base+1 ..= base+256, where base is the global overlay's wg_port
// from the request (the reference fixes base at 51420 whatever the request
// says). Near 65535 the band is truncated, never wrapped. Not safe for
// concurrent use.
type PortBand struct {
	first uint16 // first port of the band
	n     int    // ports in the band, 0..PortBandSize
	used  [PortBandSize / 64]uint64
}

// NewPortBand returns an empty band above base.
func NewPortBand(base uint16) *PortBand {
	n := min(PortBandSize, math.MaxUint16-int(base))
	return &PortBand{first: base + 1, n: n}
}

// Range returns the first and last port of the band and how many it holds
// (n == 0 when base is 65535).
func (b *PortBand) Range() (first, last uint16, n int) {
	if b.n == 0 {
		return 0, 0, 0
	}
	return b.first, b.first + uint16(b.n-1), b.n
}

func (b *PortBand) describe() string {
	if b.n == 0 {
		return fmt.Sprintf("no ports above %d", b.first-1)
	}
	first, last, n := b.Range()
	return fmt.Sprintf("%d..=%d, %d ports", first, last, n)
}

// index returns the bit index of p, or -1 when p is outside the band.
func (b *PortBand) index(p uint16) int {
	i := int(p) - int(b.first)
	if i < 0 || i >= b.n {
		return -1
	}
	return i
}

// Allocate returns the lowest free port of the band.
func (b *PortBand) Allocate() (uint16, error) {
	for w, word := range b.used {
		free := ^word
		if free == 0 {
			continue
		}
		i := w*64 + bits.TrailingZeros64(free)
		if i >= b.n {
			break
		}
		b.used[w] |= 1 << (i % 64)
		return b.first + uint16(i), nil
	}
	return 0, &bandError{msg: fmt.Sprintf("dedicated-overlay port band exhausted (%s)", b.describe()), kind: ErrExhausted}
}

// Reserve marks p as used, e.g. the port of a dedicated device restored from
// disk. It fails when p is outside the band (ErrOutOfRange: the caller keeps
// using it, the band simply never hands it out) or already used (ErrInUse).
func (b *PortBand) Reserve(p uint16) error {
	i := b.index(p)
	if i < 0 {
		return fmt.Errorf("%w: port %d is outside the dedicated-overlay port band (%s)", ErrOutOfRange, p, b.describe())
	}
	if b.used[i/64]&(1<<(i%64)) != 0 {
		return fmt.Errorf("%w: port %d of the dedicated-overlay port band", ErrInUse, p)
	}
	b.used[i/64] |= 1 << (i % 64)
	return nil
}

// Release returns p to the band. Releasing a free or out-of-band port does
// nothing.
func (b *PortBand) Release(p uint16) {
	if i := b.index(p); i >= 0 {
		b.used[i/64] &^= 1 << (i % 64)
	}
}

// IsUsed reports whether p is allocated or reserved in the band.
func (b *PortBand) IsUsed(p uint16) bool {
	i := b.index(p)
	return i >= 0 && b.used[i/64]&(1<<(i%64)) != 0
}

// bandError keeps the reference's exact exhaustion message while still
// matching ErrExhausted with errors.Is.
type bandError struct {
	msg  string
	kind error
}

func (e *bandError) Error() string { return e.msg }
func (e *bandError) Unwrap() error { return e.kind }
