// SPDX-License-Identifier: MIT
//
// Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.

//go:build amd64 && !purego

#include "textflag.h"

// 5 * 2^10, see the reduction.
DATA  polyConst5120<>+0(SB)/8, $5120
GLOBL polyConst5120<>(SB), RODATA|NOPTR, $8

// Eight independent Poly1305 lanes, radix 2^44, AVX-512 IFMA. Every zmm
// register holds the same limb of the 8 lanes. See poly_generic.go for the
// arithmetic, the 20 multipliers of the cross terms and the carry bounds;
// this code performs exactly the same operations as
// poly1305x8BlocksGeneric (bit-identical limbs).
//
// struct poly1305x8 layout (bytes): h[0..2] at 0, 64, 128; r[0..2] at 192,
// 256, 320; s20 = 20*r1, 20*r2 at 384, 448; s at 512, 576 (unused here).
//
// Register use in the loop:
//	Z0, Z1, Z2     h0, h1, h2
//	Z3, Z4, Z5     r0, r1, r2
//	Z6, Z7         s1 = 20*r1, s2 = 20*r2
//	Z8, Z9, Z10    2^44-1, 2^42-1, 2^40 (the 2^128 bit, in limb 2)
//	K1             lanes active in this block: j < counts[i]
//	CX             16*j; DX = 16*(end of segment); R9 = 16*max(counts)
//	AX, BX, SI, DI, R8, R10, R11, R12   per-lane block base pointers
//	R14            msgs[m], m a lane with the largest count
//	0(SP)..56(SP)  16*counts[0..7]
//	others         temporaries
//
// Measured on the development machine (AVX512-FP16-class Xeon, ~3.6 GHz
// estimated): ~30 cycles per block step of 8 lanes, ~0.23 cycles/byte.
// Variants with several accumulators per output, with IFMA in place of the
// <<8 shifts, or with VPGATHERQQ for the loads were slower.
//
// Constant time with respect to the data: the only branches, and the
// addresses, depend on the (public) counts and message pointers.

// func poly1305x8BlocksAVX512(p *poly1305x8, msgs *[8]*byte, counts *[8]uint64)
TEXT ·poly1305x8BlocksAVX512(SB), NOSPLIT, $64-24
	MOVQ p+0(FP), DI
	MOVQ msgs+8(FP), SI
	MOVQ counts+16(FP), DX

	// 0(SP)..56(SP) = 16*counts[i] (a byte length, so no overflow);
	// R9 = 16*max(counts); R14 = msgs[m] for a lane m with the maximum
	// count (its block j is readable for every j of the loop).
	XORQ    R9, R9
	MOVQ    0(SI), R14
	MOVQ    0(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 0(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 0(SI), R14
	MOVQ    8(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 8(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 8(SI), R14
	MOVQ    16(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 16(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 16(SI), R14
	MOVQ    24(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 24(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 24(SI), R14
	MOVQ    32(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 32(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 32(SI), R14
	MOVQ    40(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 40(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 40(SI), R14
	MOVQ    48(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 48(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 48(SI), R14
	MOVQ    56(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 56(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 56(SI), R14
	TESTQ   R9, R9
	JZ      nothing

	VMOVDQU64 0(DI), Z0
	VMOVDQU64 64(DI), Z1
	VMOVDQU64 128(DI), Z2
	VMOVDQU64 192(DI), Z3
	VMOVDQU64 256(DI), Z4
	VMOVDQU64 320(DI), Z5
	VMOVDQU64 384(DI), Z6
	VMOVDQU64 448(DI), Z7

	MOVQ         $0x00000fffffffffff, AX
	VPBROADCASTQ AX, Z8
	MOVQ         $0x000003ffffffffff, AX
	VPBROADCASTQ AX, Z9
	MOVQ         $0x0000010000000000, AX
	VPBROADCASTQ AX, Z10

	// CX = 16*j.
	XORQ CX, CX

	// The loop over j is split into segments in which the set of active
	// lanes (j < counts[i]) does not change, so that the inner loop needs
	// no per-lane address arithmetic and a fixed mask. All of this depends
	// only on the (public) counts.
segment:
	// K1 = lanes with j < counts[i], i.e. 16*j < 16*counts[i].
	VPBROADCASTQ CX, Z11
	VPCMPUQ      $1, 0(SP), Z11, K1

	// Lane base pointers: msgs[i] for active lanes, msgs[m] for inactive
	// ones (any readable block; the result is discarded by the masked
	// merge), so nil or exhausted pointers are never dereferenced. Block j
	// of lane i is at base_i + 16*j.
	// DX = 16 * (smallest count > j) = 16 * (end of this segment).
	MOVQ R9, DX
	MOVQ msgs+8(FP), R13
	MOVQ 0(R13), AX
	MOVQ 8(R13), BX
	MOVQ 16(R13), SI
	MOVQ 24(R13), DI
	MOVQ 32(R13), R8
	MOVQ 40(R13), R10
	MOVQ 48(R13), R11
	MOVQ 56(R13), R12
	CMPQ    0(SP), CX
	CMOVQLS R14, AX
	MOVQ    0(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    8(SP), CX
	CMOVQLS R14, BX
	MOVQ    8(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    16(SP), CX
	CMOVQLS R14, SI
	MOVQ    16(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    24(SP), CX
	CMOVQLS R14, DI
	MOVQ    24(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    32(SP), CX
	CMOVQLS R14, R8
	MOVQ    32(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    40(SP), CX
	CMOVQLS R14, R10
	MOVQ    40(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    48(SP), CX
	CMOVQLS R14, R11
	MOVQ    48(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    56(SP), CX
	CMOVQLS R14, R12
	MOVQ    56(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX

loop:
	// Load: Z13 = blocks of lanes 0, 2, 4, 6 and Z14 = blocks of lanes 1, 3,
	// 5, 7, one 128-bit lane each.
	VMOVDQU      (AX)(CX*1), X13
	VINSERTI32X4 $1, (SI)(CX*1), Z13, Z13
	VINSERTI32X4 $2, (R8)(CX*1), Z13, Z13
	VINSERTI32X4 $3, (R11)(CX*1), Z13, Z13
	VMOVDQU      (BX)(CX*1), X14
	VINSERTI32X4 $1, (DI)(CX*1), Z14, Z14
	VINSERTI32X4 $2, (R10)(CX*1), Z14, Z14
	VINSERTI32X4 $3, (R12)(CX*1), Z14, Z14

	// Transpose: Z12 = a[0..7] (low 8 bytes of each block), Z13 = b[0..7]
	// (high 8 bytes).
	VPUNPCKLQDQ Z14, Z13, Z12
	VPUNPCKHQDQ Z14, Z13, Z13

	// Split into radix 2^44 limbs and add to h:
	// t0 = h0 + (a & m44), t1 = h1 + ((a>>44 | b<<20) & m44),
	// t2 = h2 + (b>>24 | 2^40).
	VPSRLQ     $24, Z13, Z15
	VPORQ      Z10, Z15, Z15
	VPSLLQ     $20, Z13, Z14
	VPSRLQ     $44, Z12, Z11
	VPANDQ     Z8, Z12, Z13
	VPTERNLOGQ $0xa8, Z8, Z11, Z14 // Z14 = (Z14 | Z11) & m44
	VPADDQ     Z0, Z13, Z13
	VPADDQ     Z1, Z14, Z14
	VPADDQ     Z2, Z15, Z15

	// d0 = t0*r0 + t1*s2 + t2*s1
	// d1 = t0*r1 + t1*r0 + t2*s2
	// d2 = t0*r2 + t1*r1 + t2*r0
	// each as dKlo (sum of VPMADD52LUQ, low 52 bits of the products) and dKhi
	// (sum of VPMADD52HUQ, bits 52..103). One accumulator per output; the
	// t1 terms come first and the t0 terms last, because h0 is the last limb
	// the reduction of the previous block produces.
	VPXORQ Z23, Z23, Z23
	VPXORQ Z24, Z24, Z24
	VPXORQ Z25, Z25, Z25
	VPXORQ Z26, Z26, Z26
	VPXORQ Z27, Z27, Z27
	VPXORQ Z28, Z28, Z28
	VPMADD52LUQ Z7, Z14, Z23
	VPMADD52HUQ Z7, Z14, Z24
	VPMADD52LUQ Z3, Z14, Z25
	VPMADD52HUQ Z3, Z14, Z26
	VPMADD52LUQ Z4, Z14, Z27
	VPMADD52HUQ Z4, Z14, Z28
	VPMADD52LUQ Z6, Z15, Z23
	VPMADD52HUQ Z6, Z15, Z24
	VPMADD52LUQ Z7, Z15, Z25
	VPMADD52HUQ Z7, Z15, Z26
	VPMADD52LUQ Z3, Z15, Z27
	VPMADD52HUQ Z3, Z15, Z28
	VPMADD52LUQ Z3, Z13, Z23
	VPMADD52HUQ Z3, Z13, Z24
	VPMADD52LUQ Z4, Z13, Z25
	VPMADD52HUQ Z4, Z13, Z26
	VPMADD52LUQ Z5, Z13, Z27
	VPMADD52HUQ Z5, Z13, Z28

	// Partial reduction (bounds in poly_generic.go), arranged for a short
	// dependency chain; the results are committed to h only in the active
	// lanes (K1 merge masking), the inactive lanes keep h exactly.
	// d1lo += d0hi<<8 + d0lo>>44
	VPSLLQ $8, Z24, Z24
	VPSRLQ $44, Z23, Z19
	VPADDQ Z24, Z25, Z25
	VPADDQ Z19, Z25, Z25

	// d2lo += d1hi<<8 + d1lo>>44
	VPSLLQ $8, Z26, Z26
	VPADDQ Z26, Z27, Z27
	VPSRLQ $44, Z25, Z19
	VPADDQ Z19, Z27, Z27

	// c = d2hi<<10 + d2lo>>42 (units of 2^130 ≡ 5), h0 = (d0lo & m44) + 5*c,
	// computed as e = (d0lo & m44) + lo52(d2hi*5120) (early; 5120 = 5*2^10
	// and d2hi*5120 < 2^50, so the IFMA low half is the exact product) and
	// h0 = e + y + (y<<2) with y = d2lo>>42 (late, on the critical path).
	VPANDQ           Z8, Z23, Z23
	VPMADD52LUQ.BCST polyConst5120<>(SB), Z28, Z23
	VPSRLQ $42, Z27, Z19
	VPSLLQ $2, Z19, Z29
	VPADDQ Z19, Z23, Z23
	VPADDQ Z29, Z23, K1, Z0

	// h1 = d1lo & m44; h2 = d2lo & m42
	VPANDQ Z8, Z25, K1, Z1
	VPANDQ Z9, Z27, K1, Z2

	ADDQ $16, CX
	CMPQ CX, DX
	JB   loop
	CMPQ CX, R9
	JB   segment

	MOVQ      p+0(FP), DI
	VMOVDQU64 Z0, 0(DI)
	VMOVDQU64 Z1, 64(DI)
	VMOVDQU64 Z2, 128(DI)
	VZEROUPPER

nothing:
	RET

// 5 and 2^40-1, for the 16-lane function.
DATA  polyConst5<>+0(SB)/8, $5
GLOBL polyConst5<>(SB), RODATA|NOPTR, $8
DATA  polyConstMask40<>+0(SB)/8, $0x000000ffffffffff
GLOBL polyConstMask40<>(SB), RODATA|NOPTR, $8

// Sixteen lanes: two independent 8-lane groups (poly1305x16 = [2]poly1305x8,
// group A = lanes 0..7 at 0(DI), group B = lanes 8..15 at 640(DI)) advanced
// in the same loop. Each group runs the x8 block step above (same integer
// results, bit-identical limbs), with two instruction substitutions that
// move work off port 0 (see below). The two steps have no data dependency
// on each other; the temporaries Z11..Z15, Z19, Z23..Z29 are shared by the
// two steps (register renaming makes them independent).
//
// Performance note: the x8 loop is not bound by the latency of its carry
// chain (~15 cycles) but by execution-port throughput: per 8-lane block
// step, 19 IFMA plus 9 shifts on zmm, all port 0 only on Intel, plus 8
// port-5 shuffles and 15 port-0/5 ALU ops. Removing the loop-carried
// dependency altogether does not make it faster, and two interleaved groups
// take about twice the time of one. So interleaving alone gives only the
// saved per-call overhead; this loop also trades port-0 shifts for port-5
// byte shifts (VPSLLDQ/VPSRLDQ, exact here because the bits that cross a
// qword boundary are zero or masked), one VPSHRDQ for two shifts and an OR,
// and one IFMA for a shift and two adds: 24 port-0 uops of 48 per 8-lane
// step instead of 28 of 51. That needs AVX512BW and AVX512VBMI2 as well.
//
// Register use in the loop:
//	Z0, Z1, Z2     h0, h1, h2 of group A
//	Z3, Z4, Z5     r0, r1, r2 of group A
//	Z6, Z7         s1, s2 of group A
//	Z8, Z9, Z10    2^44-1, 2^42-1, 2^40
//	Z16, Z17, Z18  h0, h1, h2 of group B
//	Z20, Z21, Z22  r0, r1, r2 of group B
//	Z30, Z31       s1, s2 of group B
//	K1, K2         active lanes of group A, B in this segment
//	CX             16*j; DX = 16*(end of segment); R9 = 16*max(counts)
//	AX, BX, SI, DI, R8, R10, R11, R12   block base pointers, lanes 0..7
//	128(SP)..184(SP)                    block base pointers, lanes 8..15
//	R13            temporary (group B pointers)
//	R14            msgs[m], m a lane with the largest count
//	0(SP)..120(SP) 16*counts[0..15]
//
// Constant time with respect to the data, as above.

// func poly1305x16BlocksAVX512(p *poly1305x16, msgs *[16]*byte, counts *[16]uint64)
TEXT ·poly1305x16BlocksAVX512(SB), NOSPLIT, $192-24
	MOVQ p+0(FP), DI
	MOVQ msgs+8(FP), SI
	MOVQ counts+16(FP), DX

	// 0(SP)..120(SP) = 16*counts[i]; R9 = 16*max(counts); R14 = msgs[m]
	// for a lane m with the maximum count.
	XORQ    R9, R9
	MOVQ    0(SI), R14
	MOVQ    0(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 0(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 0(SI), R14
	MOVQ    8(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 8(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 8(SI), R14
	MOVQ    16(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 16(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 16(SI), R14
	MOVQ    24(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 24(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 24(SI), R14
	MOVQ    32(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 32(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 32(SI), R14
	MOVQ    40(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 40(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 40(SI), R14
	MOVQ    48(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 48(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 48(SI), R14
	MOVQ    56(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 56(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 56(SI), R14
	MOVQ    64(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 64(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 64(SI), R14
	MOVQ    72(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 72(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 72(SI), R14
	MOVQ    80(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 80(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 80(SI), R14
	MOVQ    88(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 88(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 88(SI), R14
	MOVQ    96(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 96(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 96(SI), R14
	MOVQ    104(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 104(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 104(SI), R14
	MOVQ    112(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 112(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 112(SI), R14
	MOVQ    120(DX), R8
	SHLQ    $4, R8
	MOVQ    R8, 120(SP)
	CMPQ    R8, R9
	CMOVQHI R8, R9
	CMOVQHI 120(SI), R14
	TESTQ   R9, R9
	JZ      nothing16

	VMOVDQU64 0(DI), Z0
	VMOVDQU64 64(DI), Z1
	VMOVDQU64 128(DI), Z2
	VMOVDQU64 192(DI), Z3
	VMOVDQU64 256(DI), Z4
	VMOVDQU64 320(DI), Z5
	VMOVDQU64 384(DI), Z6
	VMOVDQU64 448(DI), Z7
	VMOVDQU64 640(DI), Z16
	VMOVDQU64 704(DI), Z17
	VMOVDQU64 768(DI), Z18
	VMOVDQU64 832(DI), Z20
	VMOVDQU64 896(DI), Z21
	VMOVDQU64 960(DI), Z22
	VMOVDQU64 1024(DI), Z30
	VMOVDQU64 1088(DI), Z31

	MOVQ         $0x00000fffffffffff, AX
	VPBROADCASTQ AX, Z8
	MOVQ         $0x000003ffffffffff, AX
	VPBROADCASTQ AX, Z9
	MOVQ         $0x0000010000000000, AX
	VPBROADCASTQ AX, Z10

	// CX = 16*j.
	XORQ CX, CX

	// Segments in which the set of active lanes does not change, as in
	// the x8 function.
segment16:
	// K1, K2 = lanes with 16*j < 16*counts[i], lanes 0..7 and 8..15.
	VPBROADCASTQ CX, Z11
	VPCMPUQ      $1, 0(SP), Z11, K1
	VPCMPUQ      $1, 64(SP), Z11, K2

	// Lane base pointers: msgs[i] for active lanes, msgs[m] for inactive
	// ones (never nil or exhausted; the result is discarded by the masked
	// merge). DX = 16 * (smallest count > j) = 16 * (end of this segment).
	// Lanes 8..15 first, to 128(SP)..184(SP), with AX and BX as
	// temporaries; then lanes 0..7 into registers.
	MOVQ R9, DX
	MOVQ msgs+8(FP), R13
	MOVQ    64(R13), AX
	CMPQ    64(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 128(SP)
	MOVQ    64(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ    72(R13), AX
	CMPQ    72(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 136(SP)
	MOVQ    72(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ    80(R13), AX
	CMPQ    80(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 144(SP)
	MOVQ    80(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ    88(R13), AX
	CMPQ    88(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 152(SP)
	MOVQ    88(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ    96(R13), AX
	CMPQ    96(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 160(SP)
	MOVQ    96(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ    104(R13), AX
	CMPQ    104(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 168(SP)
	MOVQ    104(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ    112(R13), AX
	CMPQ    112(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 176(SP)
	MOVQ    112(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ    120(R13), AX
	CMPQ    120(SP), CX
	CMOVQLS R14, AX
	MOVQ    AX, 184(SP)
	MOVQ    120(SP), BX
	CMOVQLS DX, BX
	CMPQ    BX, DX
	CMOVQCS BX, DX
	MOVQ 0(R13), AX
	MOVQ 8(R13), BX
	MOVQ 16(R13), SI
	MOVQ 24(R13), DI
	MOVQ 32(R13), R8
	MOVQ 40(R13), R10
	MOVQ 48(R13), R11
	MOVQ 56(R13), R12
	CMPQ    0(SP), CX
	CMOVQLS R14, AX
	MOVQ    0(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    8(SP), CX
	CMOVQLS R14, BX
	MOVQ    8(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    16(SP), CX
	CMOVQLS R14, SI
	MOVQ    16(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    24(SP), CX
	CMOVQLS R14, DI
	MOVQ    24(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    32(SP), CX
	CMOVQLS R14, R8
	MOVQ    32(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    40(SP), CX
	CMOVQLS R14, R10
	MOVQ    40(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    48(SP), CX
	CMOVQLS R14, R11
	MOVQ    48(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX
	CMPQ    56(SP), CX
	CMOVQLS R14, R12
	MOVQ    56(SP), R13
	CMOVQLS DX, R13
	CMPQ    R13, DX
	CMOVQCS R13, DX

loop16:
	// Group A (lanes 0..7): load and transpose.
	VMOVDQU      (AX)(CX*1), X13
	VINSERTI32X4 $1, (SI)(CX*1), Z13, Z13
	VINSERTI32X4 $2, (R8)(CX*1), Z13, Z13
	VINSERTI32X4 $3, (R11)(CX*1), Z13, Z13
	VMOVDQU      (BX)(CX*1), X14
	VINSERTI32X4 $1, (DI)(CX*1), Z14, Z14
	VINSERTI32X4 $2, (R10)(CX*1), Z14, Z14
	VINSERTI32X4 $3, (R12)(CX*1), Z14, Z14
	VPUNPCKLQDQ Z14, Z13, Z12
	VPUNPCKHQDQ Z14, Z13, Z13

	// t0 = h0 + (a & m44), t1 = h1 + ((b:a)>>44 & m44),
	// t2 = h2 + (b>>24 | 2^40). b>>24 as a byte shift of the 128-bit lanes
	// (port 5) that pulls the low bytes of the neighbouring qword into bits
	// 40..63, which the ternary logic masks off: Z15 = (Z15 & m40) | 2^40.
	VPSRLDQ         $3, Z13, Z15
	VPTERNLOGQ.BCST $0xec, polyConstMask40<>(SB), Z10, Z15
	VPSHRDQ         $44, Z13, Z12, Z14
	VPANDQ          Z8, Z14, Z14
	VPANDQ          Z8, Z12, Z13
	VPADDQ     Z0, Z13, Z13
	VPADDQ     Z1, Z14, Z14
	VPADDQ     Z2, Z15, Z15

	// Products, as in the x8 loop.
	VPXORQ Z23, Z23, Z23
	VPXORQ Z24, Z24, Z24
	VPXORQ Z25, Z25, Z25
	VPXORQ Z26, Z26, Z26
	VPXORQ Z27, Z27, Z27
	VPXORQ Z28, Z28, Z28
	VPMADD52LUQ Z7, Z14, Z23
	VPMADD52HUQ Z7, Z14, Z24
	VPMADD52LUQ Z3, Z14, Z25
	VPMADD52HUQ Z3, Z14, Z26
	VPMADD52LUQ Z4, Z14, Z27
	VPMADD52HUQ Z4, Z14, Z28
	VPMADD52LUQ Z6, Z15, Z23
	VPMADD52HUQ Z6, Z15, Z24
	VPMADD52LUQ Z7, Z15, Z25
	VPMADD52HUQ Z7, Z15, Z26
	VPMADD52LUQ Z3, Z15, Z27
	VPMADD52HUQ Z3, Z15, Z28
	VPMADD52LUQ Z3, Z13, Z23
	VPMADD52HUQ Z3, Z13, Z24
	VPMADD52LUQ Z4, Z13, Z25
	VPMADD52HUQ Z4, Z13, Z26
	VPMADD52LUQ Z5, Z13, Z27
	VPMADD52HUQ Z5, Z13, Z28

	// Partial reduction, committed to h only in the active lanes.
	// dKhi<<8 as a byte shift of the 128-bit lanes (port 5 instead of
	// port 0): exact, because dKhi < 2^56, so no bits cross into the next
	// qword. h0 = (d0lo & m44) + lo52(d2hi*5120) + lo52((d2lo>>42)*5),
	// accumulated into h0 under the mask (5120*d2hi < 2^50 and
	// 5*(d2lo>>42) < 2^15, so both low halves are the exact products).
	VPSLLDQ $1, Z24, Z24
	VPSRLQ  $44, Z23, Z19
	VPADDQ  Z24, Z25, Z25
	VPADDQ  Z19, Z25, Z25
	VPSLLDQ $1, Z26, Z26
	VPADDQ  Z26, Z27, Z27
	VPSRLQ  $44, Z25, Z19
	VPADDQ  Z19, Z27, Z27
	VPANDQ           Z8, Z23, K1, Z0
	VPMADD52LUQ.BCST polyConst5120<>(SB), Z28, K1, Z0
	VPSRLQ           $42, Z27, Z19
	VPMADD52LUQ.BCST polyConst5<>(SB), Z19, K1, Z0
	VPANDQ           Z8, Z25, K1, Z1
	VPANDQ           Z9, Z27, K1, Z2

	// Group B (lanes 8..15): load and transpose; base pointers from
	// 128(SP) + 8*(lane-8).
	MOVQ         128(SP), R13
	VMOVDQU      (R13)(CX*1), X13
	MOVQ         144(SP), R13
	VINSERTI32X4 $1, (R13)(CX*1), Z13, Z13
	MOVQ         160(SP), R13
	VINSERTI32X4 $2, (R13)(CX*1), Z13, Z13
	MOVQ         176(SP), R13
	VINSERTI32X4 $3, (R13)(CX*1), Z13, Z13
	MOVQ         136(SP), R13
	VMOVDQU      (R13)(CX*1), X14
	MOVQ         152(SP), R13
	VINSERTI32X4 $1, (R13)(CX*1), Z14, Z14
	MOVQ         168(SP), R13
	VINSERTI32X4 $2, (R13)(CX*1), Z14, Z14
	MOVQ         184(SP), R13
	VINSERTI32X4 $3, (R13)(CX*1), Z14, Z14
	VPUNPCKLQDQ Z14, Z13, Z12
	VPUNPCKHQDQ Z14, Z13, Z13

	// t0 = h0 + (a & m44), t1 = h1 + ((b:a)>>44 & m44),
	// t2 = h2 + (b>>24 | 2^40). b>>24 as a byte shift of the 128-bit lanes
	// (port 5) that pulls the low bytes of the neighbouring qword into bits
	// 40..63, which the ternary logic masks off: Z15 = (Z15 & m40) | 2^40.
	VPSRLDQ         $3, Z13, Z15
	VPTERNLOGQ.BCST $0xec, polyConstMask40<>(SB), Z10, Z15
	VPSHRDQ         $44, Z13, Z12, Z14
	VPANDQ          Z8, Z14, Z14
	VPANDQ          Z8, Z12, Z13
	VPADDQ     Z16, Z13, Z13
	VPADDQ     Z17, Z14, Z14
	VPADDQ     Z18, Z15, Z15

	// Products, as in the x8 loop.
	VPXORQ Z23, Z23, Z23
	VPXORQ Z24, Z24, Z24
	VPXORQ Z25, Z25, Z25
	VPXORQ Z26, Z26, Z26
	VPXORQ Z27, Z27, Z27
	VPXORQ Z28, Z28, Z28
	VPMADD52LUQ Z31, Z14, Z23
	VPMADD52HUQ Z31, Z14, Z24
	VPMADD52LUQ Z20, Z14, Z25
	VPMADD52HUQ Z20, Z14, Z26
	VPMADD52LUQ Z21, Z14, Z27
	VPMADD52HUQ Z21, Z14, Z28
	VPMADD52LUQ Z30, Z15, Z23
	VPMADD52HUQ Z30, Z15, Z24
	VPMADD52LUQ Z31, Z15, Z25
	VPMADD52HUQ Z31, Z15, Z26
	VPMADD52LUQ Z20, Z15, Z27
	VPMADD52HUQ Z20, Z15, Z28
	VPMADD52LUQ Z20, Z13, Z23
	VPMADD52HUQ Z20, Z13, Z24
	VPMADD52LUQ Z21, Z13, Z25
	VPMADD52HUQ Z21, Z13, Z26
	VPMADD52LUQ Z22, Z13, Z27
	VPMADD52HUQ Z22, Z13, Z28

	// Partial reduction, committed to h only in the active lanes.
	// dKhi<<8 as a byte shift of the 128-bit lanes (port 5 instead of
	// port 0): exact, because dKhi < 2^56, so no bits cross into the next
	// qword. h0 = (d0lo & m44) + lo52(d2hi*5120) + lo52((d2lo>>42)*5),
	// accumulated into h0 under the mask (5120*d2hi < 2^50 and
	// 5*(d2lo>>42) < 2^15, so both low halves are the exact products).
	VPSLLDQ $1, Z24, Z24
	VPSRLQ  $44, Z23, Z19
	VPADDQ  Z24, Z25, Z25
	VPADDQ  Z19, Z25, Z25
	VPSLLDQ $1, Z26, Z26
	VPADDQ  Z26, Z27, Z27
	VPSRLQ  $44, Z25, Z19
	VPADDQ  Z19, Z27, Z27
	VPANDQ           Z8, Z23, K2, Z16
	VPMADD52LUQ.BCST polyConst5120<>(SB), Z28, K2, Z16
	VPSRLQ           $42, Z27, Z19
	VPMADD52LUQ.BCST polyConst5<>(SB), Z19, K2, Z16
	VPANDQ           Z8, Z25, K2, Z17
	VPANDQ           Z9, Z27, K2, Z18

	ADDQ $16, CX
	CMPQ CX, DX
	JB   loop16
	CMPQ CX, R9
	JB   segment16

	MOVQ      p+0(FP), DI
	VMOVDQU64 Z0, 0(DI)
	VMOVDQU64 Z1, 64(DI)
	VMOVDQU64 Z2, 128(DI)
	VMOVDQU64 Z16, 640(DI)
	VMOVDQU64 Z17, 704(DI)
	VMOVDQU64 Z18, 768(DI)
	VZEROUPPER

nothing16:
	RET
