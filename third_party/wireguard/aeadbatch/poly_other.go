//go:build !amd64 || purego

/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package aeadbatch

var hasPolyAVX512 = false

func poly1305x8BlocksAVX512(p *poly1305x8, msgs *[8]*byte, counts *[8]uint64) {
	panic("aeadbatch: poly1305x8BlocksAVX512 not available")
}

func poly1305x16BlocksAVX512(p *poly1305x16, msgs *[16]*byte, counts *[16]uint64) {
	panic("aeadbatch: poly1305x16BlocksAVX512 not available")
}
