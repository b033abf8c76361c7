//go:build amd64 && !purego

#include "textflag.h"

// func checksumAVX2(b []byte) uint64
//
// Sums the little-endian 32-bit words of b[:len(b)&^31] as an exact integer.
// Each 64-bit lane x = lo + hi<<32 is added whole into Y0/Y1 (mod 2^64, so
// those hold L + H<<32 where L, H are the sums of the low and high halves) and
// x>>32 is added into Y2/Y3 (exact H). The result L + H is computed as
// (L + H<<32) - H<<32 + H mod 2^64, exact while L + H < 2^64, which the Go
// caller guarantees by limiting len(b).
TEXT ·checksumAVX2(SB), NOSPLIT, $0-32
	MOVQ b_base+0(FP), SI
	MOVQ b_len+8(FP), CX
	VPXOR Y0, Y0, Y0
	VPXOR Y1, Y1, Y1
	VPXOR Y2, Y2, Y2
	VPXOR Y3, Y3, Y3
	CMPQ CX, $128
	JB   loop32

loop128:
	VMOVDQU 0(SI), Y4
	VMOVDQU 32(SI), Y5
	VMOVDQU 64(SI), Y6
	VMOVDQU 96(SI), Y7
	VPSRLQ  $32, Y4, Y8
	VPSRLQ  $32, Y5, Y9
	VPSRLQ  $32, Y6, Y10
	VPSRLQ  $32, Y7, Y11
	VPADDQ  Y4, Y0, Y0
	VPADDQ  Y5, Y1, Y1
	VPADDQ  Y8, Y2, Y2
	VPADDQ  Y9, Y3, Y3
	VPADDQ  Y6, Y0, Y0
	VPADDQ  Y7, Y1, Y1
	VPADDQ  Y10, Y2, Y2
	VPADDQ  Y11, Y3, Y3
	ADDQ    $128, SI
	SUBQ    $128, CX
	CMPQ    CX, $128
	JAE     loop128

loop32:
	CMPQ    CX, $32
	JB      reduce
	VMOVDQU (SI), Y4
	VPSRLQ  $32, Y4, Y8
	VPADDQ  Y4, Y0, Y0
	VPADDQ  Y8, Y2, Y2
	ADDQ    $32, SI
	SUBQ    $32, CX
	JMP     loop32

reduce:
	VPADDQ       Y1, Y0, Y0
	VPADDQ       Y3, Y2, Y2
	VEXTRACTI128 $1, Y0, X1
	VEXTRACTI128 $1, Y2, X3
	VPADDQ       X1, X0, X0
	VPADDQ       X3, X2, X2
	VMOVQ        X0, AX
	VPEXTRQ      $1, X0, BX
	VMOVQ        X2, DX
	VPEXTRQ      $1, X2, R8
	ADDQ         BX, AX // AX = L + H<<32 (mod 2^64)
	ADDQ         R8, DX // DX = H
	MOVQ         DX, R9
	SHLQ         $32, R9
	SUBQ         R9, AX
	ADDQ         DX, AX // AX = L + H
	VZEROUPPER
	MOVQ         AX, ret+24(FP)
	RET
