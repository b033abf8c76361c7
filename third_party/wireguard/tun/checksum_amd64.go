//go:build amd64 && !purego

package tun

import (
	"encoding/binary"
	"math/bits"

	"golang.org/x/sys/cpu"
)

// checksumAVX2 returns the sum, as a plain (exact) integer, of the
// little-endian 32-bit words of b[:len(b)&^31]. The sum is exact as long as
// len(b) < 1<<34 or so; checksumNoFoldSIMD keeps every call at or below
// checksumAVX2MaxChunk bytes. Requires AVX2.
//
//go:noescape
func checksumAVX2(b []byte) uint64

var useAVX2Checksum = cpu.X86.HasAVX2

const (
	// checksumAVX2MinLen is the input length from which the AVX2 code is
	// used. checksumAVX2 only handles whole 32-byte blocks, and from one
	// block up it already beats the generic code (BenchmarkChecksumNoFold:
	// ~5 vs ~8.5 ns at 32 bytes on a Xeon), so shorter inputs, which would
	// see no AVX2 work at all, keep the generic code.
	checksumAVX2MinLen = 32
	// checksumAVX2MaxChunk bounds a single checksumAVX2 call so that its
	// 64-bit result can never overflow (sum < 2^32 * chunk/4 = 2^60).
	checksumAVX2MaxChunk = 1 << 30
)

func checksumNoFold(b []byte, initial uint64) uint64 {
	if len(b) >= checksumAVX2MinLen {
		return checksumNoFoldSIMD(b, initial)
	}
	// Short inputs (IPv4 headers, empty ones that only fold initial) are
	// summed in Go, without the generic code's fixed cost; the result is
	// equivalent for the reasons given on checksumNoFoldSIMD.
	return checksumAddBE(initial, sumLE(b))
}

// checksumNoFoldSIMD is checksumNoFold using AVX2 (when available) for the
// 32-byte multiples at the front of b, regardless of length.
//
// Why this is equivalent to checksumNoFoldGeneric(b, initial): let
// R(x) = x mod 0xffff. On amd64 (little-endian) the generic code byte-swaps
// initial into little-endian order (ac = bswap64(initial)), adds the
// little-endian 64-bit words of b with end-around carry, and byte-swaps ac
// back. End-around-carry addition is addition modulo 2^64-1, and 0xffff
// divides 2^64-1, so R(ac) = R(bswap64(initial) + sum of the little-endian
// 16-bit words of b) (2^16 == 1 mod 0xffff); moreover ac is zero exactly when
// initial and every word of b are zero, because an end-around-carry sum of
// two values is zero only when both are. checksum() folds by
// x = (x>>16) + (x&0xffff), four times, which keeps R(x) and keeps x nonzero
// when it was nonzero, and ends in [0, 0xffff]; so the folded 16-bit result
// depends only on R(ac) and on whether ac is zero. bswap64 is a byte
// permutation with R(bswap64(x)) = R(x * 2^8) (a rotation of each 16-bit
// group by 8 bits is multiplication by 2^8 modulo 0xffff, 2^16 == 1).
//
// Here s = checksumAVX2(b) is the exact integer sum of the little-endian
// 32-bit words of the first n = len(b)&^31 bytes, to which the Go tail adds
// the little-endian 32/16-bit words of the remaining bytes (n is even, so the
// tail keeps its 16-bit word alignment; an odd last byte is its own
// little-endian 16-bit word, i.e. the byte itself, as in the generic code).
// So R(s) = R(sum of the little-endian 16-bit words of b), and s is zero
// exactly when b is all zeros. The result is initial +' bswap64(s) with
// end-around carry; its bswap64 has residue R(2^8*initial + 2^16*s) =
// R(bswap64(initial) + s), the same as the generic ac, and it is zero exactly
// when initial and b are all zero, like the generic ac. Since the generic code
// returns bswap64(ac), both results have equal residue and zero-ness, hence
// the same checksum() result. The raw 64-bit value may differ; no caller
// uses it other than by folding it with checksum() or passing it back in as
// initial, which the above covers (the argument holds for any initial).
func checksumNoFoldSIMD(b []byte, initial uint64) uint64 {
	if !useAVX2Checksum {
		return checksumNoFoldGeneric(b, initial)
	}
	for len(b) > checksumAVX2MaxChunk {
		initial = checksumAddBE(initial, checksumAVX2(b[:checksumAVX2MaxChunk]))
		b = b[checksumAVX2MaxChunk:]
	}
	s := checksumAVX2(b)
	return checksumAddBE(initial, s+sumLE(b[len(b)&^31:]))
}

// sumLE returns the plain sum of the little-endian 32-bit (then 16-bit,
// then 8-bit) words of a tail of fewer than 32 bytes that starts at an even
// offset of the input. Added to checksumAVX2's sum (< 2^60) it cannot
// overflow: at most 8 values below 2^32. A final odd byte counts as the low
// byte of a little-endian 16-bit word, as in checksumNoFoldGeneric.
func sumLE(b []byte) uint64 {
	var s uint64
	for len(b) >= 8 {
		v := binary.LittleEndian.Uint64(b)
		s += v&0xffffffff + v>>32
		b = b[8:]
	}
	if len(b) >= 4 {
		s += uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		s += uint64(binary.LittleEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0])
	}
	return s
}

// checksumAddBE adds s, an exact sum of little-endian words, to the
// big-endian-order ones'-complement accumulator ac with end-around carry.
// The result is zero only if ac and s are both zero.
func checksumAddBE(ac, s uint64) uint64 {
	ac, c := bits.Add64(ac, bits.ReverseBytes64(s), 0)
	return ac + c
}
