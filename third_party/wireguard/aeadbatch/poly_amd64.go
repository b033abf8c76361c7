//go:build amd64 && !purego

/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package aeadbatch

import "golang.org/x/sys/cpu"

// hasPolyAVX512 reports whether poly1305x8BlocksAVX512 and
// poly1305x16BlocksAVX512 may be called. The x8 assembly uses only AVX-512F
// on zmm registers (VPCMPUQ into a k-mask, VPBROADCASTQ, VINSERTI32X4,
// VPUNPCK[LH]QDQ, VPTERNLOGQ, merge masking, embedded broadcast) and AVX-512
// IFMA (VPMADD52LUQ/VPMADD52HUQ on zmm); the x16 assembly also uses VPSLLDQ
// and VPSRLDQ on zmm (AVX512BW) and VPSHRDQ (AVX512VBMI2); no VL/DQ.
// cpu.X86.HasAVX512F also implies that the OS saves the zmm and mask state.
var hasPolyAVX512 = cpu.X86.HasAVX512F && cpu.X86.HasAVX512IFMA &&
	cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VBMI2

// poly1305x8BlocksAVX512 is the AVX-512 IFMA implementation of
// poly1305x8BlocksGeneric, with bit-identical results.
//
//go:noescape
func poly1305x8BlocksAVX512(p *poly1305x8, msgs *[8]*byte, counts *[8]uint64)

// poly1305x16BlocksAVX512 is the AVX-512 IFMA implementation of
// poly1305x16BlocksGeneric, with bit-identical results. It interleaves the
// two 8-lane groups in one loop, so it costs about as much per block step as
// poly1305x8BlocksAVX512 does for 8 lanes.
//
//go:noescape
func poly1305x16BlocksAVX512(p *poly1305x16, msgs *[16]*byte, counts *[16]uint64)
