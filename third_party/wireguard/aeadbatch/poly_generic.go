/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package aeadbatch

import (
	"encoding/binary"
	"math/bits"
	"unsafe"
)

// Eight independent Poly1305 (RFC 8439) accumulators advanced together
// ("multi-buffer"): lane i absorbs only its own message, with its own
// one-time key (r, s). Every lane is a plain Horner evaluation
//
//	h = (h + m) * r  mod 2^130 - 5
//
// with no powers of r, so lanes never interact.
//
// Representation: radix 2^44, three limbs per value,
//
//	x = x0 + x1*2^44 + x2*2^88,  nominally x0, x1 < 2^44, x2 < 2^42,
//
// chosen so that every multiplication operand fits the 52 bits that
// VPMADD52LUQ/VPMADD52HUQ (AVX-512 IFMA) read. Those instructions add the low
// (bits 0..51) respectively high (bits 52..103) half of the 104-bit product of
// the low 52 bits of their operands to a 64-bit accumulator.
//
// Product (h*r), limb weights 2^0, 2^44, 2^88:
//
//	h0*r0 -> 2^0     h0*r1 -> 2^44    h0*r2 -> 2^88
//	h1*r0 -> 2^44    h1*r1 -> 2^88    h1*r2 -> 2^132 = 4*2^130 ≡ 4*5 = 20
//	h2*r0 -> 2^88    h2*r1 -> 2^132 ≡ 20    h2*r2 -> 2^176 = 2^132*2^44 ≡ 20*2^44
//
// hence, with s1 = 20*r1 and s2 = 20*r2 precomputed,
//
//	d0 = h0*r0 + h1*s2 + h2*s1     (weight 2^0)
//	d1 = h0*r1 + h1*r0 + h2*s2     (weight 2^44)
//	d2 = h0*r2 + h1*r1 + h2*r0     (weight 2^88)
//
// Each dK is kept as dKlo (sum of the low 52-bit halves, weight 2^(44K)) and
// dKhi (sum of the high halves, weight 2^(44K+52)). The high halves are
// moved up one limb with a shift: 2^52 = 2^44*2^8, so d0hi<<8 goes to limb 1
// and d1hi<<8 to limb 2; for limb 2, 2^(88+52) = 2^140 = 2^130*2^10, so
// d2hi<<10 counts in units of 2^130 ≡ 5 and is folded into limb 0 times 5,
// together with the carry d2lo>>42 (2^(88+42) = 2^130 ≡ 5).
//
// Carry bounds (all quantities are per lane, uint64):
//
//	Invariant between blocks: h0 < 2^50.1, h1 < 2^44, h2 < 2^42 (h0 is not
//	carried into h1 after the reduction; it is small enough as it is).
//	Clamped r < 2^124: r0, r1 < 2^44, r2 < 2^36; s1 = 20*r1 < 2^48.33,
//	s2 = 20*r2 < 2^40.33. All < 2^52, so IFMA sees them exactly.
//	Message limbs: m0, m1 < 2^44; m2 = (m>>88) | 2^40 < 2^41.
//	t = h + m: t0 < 2^50.1 + 2^44 < 2^50.2, t1 < 2^45, t2 < 2^42 + 2^41 < 2^43,
//	all < 2^52, so IFMA sees them exactly too.
//	Products: column 0: t0*r0 < 2^94.2, t1*s2 < 2^85.4, t2*s1 < 2^91.4;
//	column 1: t0*r1 < 2^94.2, t1*r0 < 2^89, t2*s2 < 2^83.4;
//	column 2: t0*r2 < 2^86.2, t1*r1 < 2^89, t2*r0 < 2^87.
//	Low halves: each < 2^52, so dKlo < 3*2^52 < 2^53.6.
//	High halves: product>>52, so d0hi < 2^42.2 + 2^39.4 + 2^33.4 < 2^42.5,
//	d1hi < 2^42.2 + 2^37 + 2^31.4 < 2^42.3, d2hi < 2^34.2 + 2^37 + 2^35 < 2^37.6.
//	Reduction:
//	  d1lo += d0hi<<8 + d0lo>>44   (d0hi<<8 < 2^50.5 < 2^52, so an asm may
//	                                compute it as lo52(d0hi*256))  < 2^54
//	  d2lo += d1hi<<8 + d1lo>>44   (d1hi<<8 < 2^50.3 < 2^52)      < 2^54
//	  c = d2hi<<10 + d2lo>>42      (5*(d2hi<<10) < 2^50 < 2^52, so the
//	                                asm computes it as lo52(d2hi*5120)) < 2^47.7
//	  h0' = (d0lo & (2^44-1)) + 5*c (5*c < 2^50.1 < 2^52, lo52(c*5) is exact)
//	                               < 2^44 + 2^50.03 < 2^50.1
//	  h1' = d1lo & (2^44-1) < 2^44;  h2' = d2lo & (2^42-1) < 2^42
//	So the invariant holds, no uint64 comes near overflowing, every IFMA
//	operand stays below 2^52 and every IFMA used as a shift or a
//	multiplication by 5 has a product below 2^52. Every step is an exact
//	identity modulo 2^130 - 5.
//
// The limbs are not fully reduced between blocks; sum does the final
// reduction.
//
// poly1305x8 holds 8 lanes in structure-of-arrays form, laid out for the
// assembly (byte offsets: h 0, r 192, s20 384, s 512).
type poly1305x8 struct {
	h   [3][8]uint64 // accumulator limbs, radix 2^44
	r   [3][8]uint64 // clamped r, radix 2^44
	s20 [2][8]uint64 // 20*r1, 20*r2
	s   [2][8]uint64 // s, low and high 64-bit halves
}

const (
	polyMask44 = 1<<44 - 1
	polyMask42 = 1<<42 - 1
	polyMask52 = 1<<52 - 1
)

// setKey clamps r = key[0:16], stores s = key[16:32] and sets h = 0 for lane.
func (p *poly1305x8) setKey(lane int, key *[32]byte) {
	lo := binary.LittleEndian.Uint64(key[0:8]) & 0x0ffffffc0fffffff
	hi := binary.LittleEndian.Uint64(key[8:16]) & 0x0ffffffc0ffffffc
	r0 := lo & polyMask44
	r1 := (lo>>44 | hi<<20) & polyMask44
	r2 := hi >> 24
	p.r[0][lane] = r0
	p.r[1][lane] = r1
	p.r[2][lane] = r2
	p.s20[0][lane] = 20 * r1
	p.s20[1][lane] = 20 * r2
	p.s[0][lane] = binary.LittleEndian.Uint64(key[16:24])
	p.s[1][lane] = binary.LittleEndian.Uint64(key[24:32])
	p.h[0][lane] = 0
	p.h[1][lane] = 0
	p.h[2][lane] = 0
}

// sum fully reduces lane's accumulator mod 2^130 - 5, adds s mod 2^128 and
// writes the little-endian tag. It does not modify p.
func (p *poly1305x8) sum(lane int, tag *[16]byte) {
	h0, h1, h2 := p.h[0][lane], p.h[1][lane], p.h[2][lane]

	// Normalize the limbs. On entry h0 < 2^50.1, h1 < 2^44, h2 < 2^42 (the
	// invariant; anything with h0 < 2^64, h1 < 2^44 + 2^20, h2 < 2^42 works).
	h1 += h0 >> 44
	h0 &= polyMask44
	h2 += h1 >> 44
	h1 &= polyMask44
	c := h2 >> 42
	h2 &= polyMask42
	h0 += 5 * c
	h1 += h0 >> 44
	h0 &= polyMask44
	h2 += h1 >> 44
	h1 &= polyMask44
	// Now h < 2^130: the first pass makes h2 <= 2^42; if c == 1, h2 is 0
	// after masking and at most 1 after the second pass; if c == 0, h0 is
	// already below 2^44, nothing carries and h2 < 2^42 stays.
	// h may still be in [p, 2^130).

	// g = h + 5 - 2^130; if g >= 0 (no borrow) then h = g. Constant time.
	g0 := h0 + 5
	g1 := h1 + g0>>44
	g0 &= polyMask44
	g2 := h2 + g1>>44
	g1 &= polyMask44
	// g2 >= 2^42 iff h + 5 >= 2^130 iff h >= p.
	sel := -(g2 >> 42) // all ones if h >= p
	g2 &= polyMask42
	h0 = h0&^sel | g0&sel
	h1 = h1&^sel | g1&sel
	h2 = h2&^sel | g2&sel

	// To 128 bits (mod 2^128) and add s.
	lo := h0 | h1<<44
	hi := h1>>20 | h2<<24
	var carry uint64
	lo, carry = bits.Add64(lo, p.s[0][lane], 0)
	hi, _ = bits.Add64(hi, p.s[1][lane], carry)
	binary.LittleEndian.PutUint64(tag[0:8], lo)
	binary.LittleEndian.PutUint64(tag[8:16], hi)
}

// polyMadd52lo returns acc + low 52 bits of (a mod 2^52)*(b mod 2^52), like
// VPMADD52LUQ.
func polyMadd52lo(acc, a, b uint64) uint64 {
	_, lo := bits.Mul64(a&polyMask52, b&polyMask52)
	return acc + lo&polyMask52
}

// polyMadd52hi returns acc + bits 52..103 of (a mod 2^52)*(b mod 2^52), like
// VPMADD52HUQ.
func polyMadd52hi(acc, a, b uint64) uint64 {
	hi, lo := bits.Mul64(a&polyMask52, b&polyMask52)
	return acc + (hi<<12 | lo>>52)
}

// poly1305x8BlocksGeneric absorbs counts[i] full 16-byte blocks read from
// msgs[i], msgs[i]+16, ... into lane i, each block with the 2^128 bit set.
// Lanes with counts[i] == 0 are untouched (msgs[i] may be nil then). It is
// the pure Go reference and performs exactly the arithmetic of the assembly,
// so both produce bit-identical limbs.
func poly1305x8BlocksGeneric(p *poly1305x8, msgs *[8]*byte, counts *[8]uint64) {
	for i := 0; i < 8; i++ {
		n := counts[i]
		if n == 0 {
			continue
		}
		msg := unsafe.Slice(msgs[i], n*16)
		h0, h1, h2 := p.h[0][i], p.h[1][i], p.h[2][i]
		r0, r1, r2 := p.r[0][i], p.r[1][i], p.r[2][i]
		s1, s2 := p.s20[0][i], p.s20[1][i]
		for len(msg) >= 16 {
			a := binary.LittleEndian.Uint64(msg[0:8])
			b := binary.LittleEndian.Uint64(msg[8:16])
			msg = msg[16:]

			t0 := h0 + a&polyMask44
			t1 := h1 + (a>>44|b<<20)&polyMask44
			t2 := h2 + (b>>24 | 1<<40)

			var d0lo, d0hi, d1lo, d1hi, d2lo, d2hi uint64
			d0lo = polyMadd52lo(d0lo, t0, r0)
			d0hi = polyMadd52hi(d0hi, t0, r0)
			d0lo = polyMadd52lo(d0lo, t1, s2)
			d0hi = polyMadd52hi(d0hi, t1, s2)
			d0lo = polyMadd52lo(d0lo, t2, s1)
			d0hi = polyMadd52hi(d0hi, t2, s1)

			d1lo = polyMadd52lo(d1lo, t0, r1)
			d1hi = polyMadd52hi(d1hi, t0, r1)
			d1lo = polyMadd52lo(d1lo, t1, r0)
			d1hi = polyMadd52hi(d1hi, t1, r0)
			d1lo = polyMadd52lo(d1lo, t2, s2)
			d1hi = polyMadd52hi(d1hi, t2, s2)

			d2lo = polyMadd52lo(d2lo, t0, r2)
			d2hi = polyMadd52hi(d2hi, t0, r2)
			d2lo = polyMadd52lo(d2lo, t1, r1)
			d2hi = polyMadd52hi(d2hi, t1, r1)
			d2lo = polyMadd52lo(d2lo, t2, r0)
			d2hi = polyMadd52hi(d2hi, t2, r0)

			d1lo += d0hi<<8 + d0lo>>44
			d2lo += d1hi<<8 + d1lo>>44
			c := d2hi<<10 + d2lo>>42
			h0 = d0lo&polyMask44 + 5*c
			h1 = d1lo & polyMask44
			h2 = d2lo & polyMask42
		}
		p.h[0][i], p.h[1][i], p.h[2][i] = h0, h1, h2
	}
}

// poly1305x16 is two 8-lane states: lanes 0..7 are [0], lanes 8..15 are [1].
// The assembly relies on the layout: [1] starts 640 bytes after [0].
type poly1305x16 [2]poly1305x8

// setKey clamps r = key[0:16], stores s = key[16:32] and sets h = 0 for lane
// (0..15).
func (p *poly1305x16) setKey(lane int, key *[32]byte) {
	p[lane>>3].setKey(lane&7, key)
}

// sum writes lane's tag (lane 0..15), see poly1305x8.sum. It does not modify
// p.
func (p *poly1305x16) sum(lane int, tag *[16]byte) {
	p[lane>>3].sum(lane&7, tag)
}

// poly1305x16BlocksGeneric is poly1305x8BlocksGeneric for 16 lanes: lanes
// 0..7 use msgs[0:8], counts[0:8] and p[0], lanes 8..15 the rest. It is
// bit-identical to poly1305x16BlocksAVX512.
func poly1305x16BlocksGeneric(p *poly1305x16, msgs *[16]*byte, counts *[16]uint64) {
	poly1305x8BlocksGeneric(&p[0], (*[8]*byte)(msgs[0:8]), (*[8]uint64)(counts[0:8]))
	poly1305x8BlocksGeneric(&p[1], (*[8]*byte)(msgs[8:16]), (*[8]uint64)(counts[8:16]))
}
