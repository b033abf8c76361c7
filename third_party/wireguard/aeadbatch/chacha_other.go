//go:build !amd64 || purego

/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package aeadbatch

// hasChaChaAVX512 is always false when the AVX-512 kernel is not built.
var hasChaChaAVX512 = false

// chacha20x16XORAVX512 is never called when hasChaChaAVX512 is false.
func chacha20x16XORAVX512(key *[8]uint32, ctr *[16]uint32, nonce *[3][16]uint32, src, dst *[16]*byte) {
	panic("aeadbatch: chacha20x16XORAVX512 not available")
}
