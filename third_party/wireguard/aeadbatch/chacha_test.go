/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package aeadbatch

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math/rand"
	"testing"

	"golang.org/x/crypto/chacha20"
)

type chachaInput struct {
	key   [8]uint32
	ctr   [16]uint32
	nonce [3][16]uint32
}

func randomChaChaInput(rng *rand.Rand) *chachaInput {
	in := new(chachaInput)
	for i := range in.key {
		in.key[i] = rng.Uint32()
	}
	for i := range in.ctr {
		in.ctr[i] = rng.Uint32()
	}
	for r := range in.nonce {
		for i := range in.nonce[r] {
			in.nonce[r][i] = rng.Uint32()
		}
	}
	return in
}

func (in *chachaInput) keyBytes() []byte {
	k := make([]byte, 32)
	for i, w := range in.key {
		binary.LittleEndian.PutUint32(k[4*i:], w)
	}
	return k
}

func (in *chachaInput) nonceBytes(lane int) []byte {
	n := make([]byte, 12)
	for r := 0; r < 3; r++ {
		binary.LittleEndian.PutUint32(n[4*r:], in.nonce[r][lane])
	}
	return n
}

// referenceBlock computes one keystream block with golang.org/x/crypto/chacha20.
func referenceBlock(t testing.TB, key, nonce []byte, ctr uint32) []byte {
	c, err := chacha20.NewUnauthenticatedCipher(key, nonce)
	if err != nil {
		t.Fatal(err)
	}
	c.SetCounter(ctr)
	out := make([]byte, 64)
	c.XORKeyStream(out, out)
	return out
}

func TestChaCha20x16GenericRFC8439(t *testing.T) {
	// RFC 8439 section 2.3.2.
	want, _ := hex.DecodeString("" +
		"10f1e7e4d13b5915500fdd1fa32071c4" +
		"c7d1f4c733c068030422aa9ac3d46c4e" +
		"d2826446079faa0914c2d705d98b02a2" +
		"b5129cd1de164eb9cbd083e8a2503c4e")
	in := new(chachaInput)
	for i := range in.key {
		// key bytes 00 01 02 ... 1f
		b := byte(4 * i)
		in.key[i] = uint32(b) | uint32(b+1)<<8 | uint32(b+2)<<16 | uint32(b+3)<<24
	}
	const lane = 5
	for i := range in.ctr {
		in.ctr[i] = uint32(i) * 7
	}
	in.ctr[lane] = 1
	in.nonce[0][lane] = 0x09000000
	in.nonce[1][lane] = 0x4a000000
	in.nonce[2][lane] = 0x00000000
	var out [1024]byte
	chacha20x16Generic(&in.key, &in.ctr, &in.nonce, &out)
	if got := out[64*lane : 64*lane+64]; !bytes.Equal(got, want) {
		t.Fatalf("RFC 8439 2.3.2 mismatch:\n got %x\nwant %x", got, want)
	}
	if hasChaChaAVX512 {
		var out2 [1024]byte
		chacha20x16AVX512(&in.key, &in.ctr, &in.nonce, &out2)
		if got := out2[64*lane : 64*lane+64]; !bytes.Equal(got, want) {
			t.Fatalf("AVX-512 RFC 8439 2.3.2 mismatch:\n got %x\nwant %x", got, want)
		}
	}
}

func TestChaCha20x16GenericVsXCrypto(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for iter := 0; iter < 50; iter++ {
		in := randomChaChaInput(rng)
		var out [1024]byte
		chacha20x16Generic(&in.key, &in.ctr, &in.nonce, &out)
		key := in.keyBytes()
		for i := 0; i < 16; i++ {
			want := referenceBlock(t, key, in.nonceBytes(i), in.ctr[i])
			if got := out[64*i : 64*i+64]; !bytes.Equal(got, want) {
				t.Fatalf("iter %d lane %d:\n got %x\nwant %x", iter, i, got, want)
			}
		}
	}
}

func checkAVX512MatchesGeneric(t *testing.T, in *chachaInput) {
	t.Helper()
	var want, got [1024]byte
	chacha20x16Generic(&in.key, &in.ctr, &in.nonce, &want)
	// Pre-fill with garbage to make sure every byte is written.
	for i := range got {
		got[i] = 0xa5
	}
	chacha20x16AVX512(&in.key, &in.ctr, &in.nonce, &got)
	if got != want {
		for i := 0; i < 16; i++ {
			if !bytes.Equal(got[64*i:64*i+64], want[64*i:64*i+64]) {
				t.Fatalf("lane %d:\n got %x\nwant %x", i, got[64*i:64*i+64], want[64*i:64*i+64])
			}
		}
	}
}

func TestChaCha20x16AVX512(t *testing.T) {
	if !hasChaChaAVX512 {
		t.Skip("AVX-512F not available on this CPU/OS (or purego build)")
	}
	rng := rand.New(rand.NewSource(2))
	for iter := 0; iter < 2000; iter++ {
		checkAVX512MatchesGeneric(t, randomChaChaInput(rng))
	}
	// Structured inputs: single bit set in a single word, to catch lane or
	// word permutation mistakes that random data might mask.
	for w := 0; w < 8+16+48; w++ {
		in := new(chachaInput)
		switch {
		case w < 8:
			in.key[w] = 1
		case w < 24:
			in.ctr[w-8] = 1
		default:
			in.nonce[(w-24)/16][(w-24)%16] = 1
		}
		checkAVX512MatchesGeneric(t, in)
	}
}

func TestChaCha20x16CounterEdge(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	edges := []uint32{0xffffffff, 0xfffffffe, 0xfffffff0, 0x80000000, 0x7fffffff, 0, 1}
	for iter := 0; iter < 20; iter++ {
		in := randomChaChaInput(rng)
		for i := range in.ctr {
			in.ctr[i] = edges[(i+iter)%len(edges)]
		}
		var out [1024]byte
		chacha20x16Generic(&in.key, &in.ctr, &in.nonce, &out)
		key := in.keyBytes()
		for i := 0; i < 16; i++ {
			want := referenceBlock(t, key, in.nonceBytes(i), in.ctr[i])
			if got := out[64*i : 64*i+64]; !bytes.Equal(got, want) {
				t.Fatalf("generic lane %d ctr %#x:\n got %x\nwant %x", i, in.ctr[i], got, want)
			}
		}
		if hasChaChaAVX512 {
			checkAVX512MatchesGeneric(t, in)
		}
	}
}

func benchmarkChaCha20x16(b *testing.B, f func(*[8]uint32, *[16]uint32, *[3][16]uint32, *[1024]byte)) {
	in := randomChaChaInput(rand.New(rand.NewSource(4)))
	var out [1024]byte
	b.SetBytes(1024)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f(&in.key, &in.ctr, &in.nonce, &out)
	}
}

func BenchmarkChaCha20x16(b *testing.B) {
	b.Run("generic", func(b *testing.B) { benchmarkChaCha20x16(b, chacha20x16Generic) })
	b.Run("avx512", func(b *testing.B) {
		if !hasChaChaAVX512 {
			b.Skip("AVX-512F not available")
		}
		benchmarkChaCha20x16(b, chacha20x16AVX512)
	})
}

// chacha20x16AVX512 is the keystream alone, from the XOR kernel with a
// zero source: what the tests above compare with the generic function.
func chacha20x16AVX512(key *[8]uint32, ctr *[16]uint32, nonce *[3][16]uint32, out *[1024]byte) {
	var zero [64]byte
	var src, dst [16]*byte
	for i := range src {
		src[i], dst[i] = &zero[0], &out[64*i]
	}
	chacha20x16XORAVX512(key, ctr, nonce, &src, &dst)
}

// The XOR kernel reads and writes each lane's block where its pointers
// say, in place or not, in any order of lanes.
func TestChaCha20x16XORScattersLikeGeneric(t *testing.T) {
	if !hasChaChaAVX512 {
		t.Skip("no AVX-512F on this CPU (or purego): the assembly is not built or cannot run")
	}
	rng := rand.New(rand.NewSource(7))
	for round := 0; round < 500; round++ {
		in := randomChaChaInput(rng)
		// One buffer, blocks at odd offsets in a shuffled order; half the
		// lanes in place, half into a second buffer.
		buf := make([]byte, 16*64+7)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		want := append([]byte{}, buf...)
		other := make([]byte, 16*64+7)
		wantOther := make([]byte, len(other))
		perm := rng.Perm(16)
		var src, dst, srcG, dstG [16]*byte
		for lane, slot := range perm {
			off := 3 + 64*slot
			src[lane], srcG[lane] = &buf[off], &want[off]
			if lane%2 == 0 {
				dst[lane], dstG[lane] = &buf[off], &want[off]
			} else {
				dst[lane], dstG[lane] = &other[off], &wantOther[off]
			}
		}
		chacha20x16XORAVX512(&in.key, &in.ctr, &in.nonce, &src, &dst)
		chacha20x16XORGeneric(&in.key, &in.ctr, &in.nonce, &srcG, &dstG)
		if !bytes.Equal(buf, want) || !bytes.Equal(other, wantOther) {
			t.Fatalf("round %d: the AVX-512 XOR kernel wrote other bytes than the generic one", round)
		}
	}
}
