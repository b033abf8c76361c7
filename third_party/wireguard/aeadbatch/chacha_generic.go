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

// ChaCha20 constants "expand 32-byte k" (state words 0..3).
const (
	chachaC0 = 0x61707865
	chachaC1 = 0x3320646e
	chachaC2 = 0x79622d32
	chachaC3 = 0x6b206574
)

func chachaQR(a, b, c, d uint32) (uint32, uint32, uint32, uint32) {
	a += b
	d ^= a
	d = bits.RotateLeft32(d, 16)
	c += d
	b ^= c
	b = bits.RotateLeft32(b, 12)
	a += b
	d ^= a
	d = bits.RotateLeft32(d, 8)
	c += d
	b ^= c
	b = bits.RotateLeft32(b, 7)
	return a, b, c, d
}

// chacha20x16Generic writes the keystream block of lane i (key, counter ctr[i],
// nonce words nonce[0][i], nonce[1][i], nonce[2][i], i.e. state words 13..15) to out[64*i:64*i+64],
// serialized little-endian exactly as RFC 8439 section 2.3 (state after 20 rounds plus the input state).
func chacha20x16Generic(key *[8]uint32, ctr *[16]uint32, nonce *[3][16]uint32, out *[1024]byte) {
	for i := 0; i < 16; i++ {
		var in [16]uint32
		in[0], in[1], in[2], in[3] = chachaC0, chachaC1, chachaC2, chachaC3
		copy(in[4:12], key[:])
		in[12] = ctr[i]
		in[13], in[14], in[15] = nonce[0][i], nonce[1][i], nonce[2][i]

		x := in
		for r := 0; r < 10; r++ {
			x[0], x[4], x[8], x[12] = chachaQR(x[0], x[4], x[8], x[12])
			x[1], x[5], x[9], x[13] = chachaQR(x[1], x[5], x[9], x[13])
			x[2], x[6], x[10], x[14] = chachaQR(x[2], x[6], x[10], x[14])
			x[3], x[7], x[11], x[15] = chachaQR(x[3], x[7], x[11], x[15])
			x[0], x[5], x[10], x[15] = chachaQR(x[0], x[5], x[10], x[15])
			x[1], x[6], x[11], x[12] = chachaQR(x[1], x[6], x[11], x[12])
			x[2], x[7], x[8], x[13] = chachaQR(x[2], x[7], x[8], x[13])
			x[3], x[4], x[9], x[14] = chachaQR(x[3], x[4], x[9], x[14])
		}
		blk := out[64*i : 64*i+64]
		for w := 0; w < 16; w++ {
			binary.LittleEndian.PutUint32(blk[4*w:], x[w]+in[w])
		}
	}
}

// chacha20x16XORGeneric XORs the keystream block of lane i (as
// chacha20x16Generic computes it) with the 64 bytes at src[i] and writes
// the result to the 64 bytes at dst[i]; src[i] and dst[i] may be equal.
func chacha20x16XORGeneric(key *[8]uint32, ctr *[16]uint32, nonce *[3][16]uint32, src, dst *[16]*byte) {
	var stream [1024]byte
	chacha20x16Generic(key, ctr, nonce, &stream)
	for i := range src {
		in := (*[64]byte)(unsafe.Pointer(src[i]))
		out := (*[64]byte)(unsafe.Pointer(dst[i]))
		for j := range out {
			out[j] = in[j] ^ stream[64*i+j]
		}
	}
}
