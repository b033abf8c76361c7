//go:build amd64 && !purego

/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package aeadbatch

import "golang.org/x/sys/cpu"

// hasChaChaAVX512 reports whether chacha20x16AVX512 may be called. The kernel
// uses only AVX-512 Foundation instructions (VPROLD, VPBROADCASTD, VSHUFI32X4,
// VPUNPCK*, VMOVDQU32/VMOVDQA32 on zmm registers). cpu.X86.HasAVX512F already
// implies OS support for saving the opmask/zmm state.
var hasChaChaAVX512 = cpu.X86.HasAVX512F

// chacha20x16XORAVX512 is the 16-lane AVX-512 implementation of
// chacha20x16XORGeneric. Every src[i] and dst[i] must point at 64 bytes;
// they may be the same (in place).
//
//go:noescape
func chacha20x16XORAVX512(key *[8]uint32, ctr *[16]uint32, nonce *[3][16]uint32, src, dst *[16]*byte)
