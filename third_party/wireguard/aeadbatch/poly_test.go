/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package aeadbatch

import (
	"bytes"
	"encoding/binary"
	"math/big"
	"math/rand"
	"testing"

	"golang.org/x/crypto/poly1305" //nolint:staticcheck // reference implementation
)

type polyBlocksFunc func(p *poly1305x8, msgs *[8]*byte, counts *[8]uint64)

// polyFeed feeds chunk[i] (a multiple of 16 bytes, possibly empty) to lane i.
// Empty lanes get a nil pointer and count 0.
func polyFeed(p *poly1305x8, f polyBlocksFunc, chunks *[8][]byte) {
	var msgs [8]*byte
	var counts [8]uint64
	for i, c := range chunks {
		if len(c)%16 != 0 {
			panic("chunk not a multiple of 16")
		}
		if len(c) > 0 {
			msgs[i] = &c[0]
			counts[i] = uint64(len(c) / 16)
		}
	}
	f(p, &msgs, &counts)
}

func polyRefTag(key *[32]byte, msg []byte) [16]byte {
	var tag [16]byte
	poly1305.Sum(&tag, msg, key)
	return tag
}

func polyRandKey(rng *rand.Rand, key *[32]byte) {
	rng.Read(key[:])
	switch rng.Intn(8) {
	case 0: // r with every clamp-allowed bit set, s all ones
		for i := range key {
			key[i] = 0xff
		}
	case 1: // r with every clamp-allowed bit set, random s
		for i := 0; i < 16; i++ {
			key[i] = 0xff
		}
	case 2: // r = 0
		for i := 0; i < 16; i++ {
			key[i] = 0
		}
	}
}

func polyRandMsg(rng *rand.Rand, blocks int) []byte {
	m := make([]byte, 16*blocks)
	switch rng.Intn(4) {
	case 0: // all 0xff blocks stress the carries
		for i := range m {
			m[i] = 0xff
		}
	case 1:
		// zeros
	default:
		rng.Read(m)
	}
	return m
}

// polyCheckLanes splits every lane's message into nCalls chunks (at random
// block boundaries, each chunk a fresh copy in a different buffer, empty
// chunks passed as nil), feeds them to every implementation in funcs,
// requires bit-identical states after every call, checks the documented limb
// bounds and compares every lane's tag with x/crypto's poly1305.Sum of the
// whole message.
func polyCheckLanes(t *testing.T, rng *rand.Rand, funcs []polyBlocksFunc, names []string, keys *[8][32]byte, msgs *[8][]byte, nCalls int) {
	t.Helper()
	// Pre-split chunks so that all implementations see the same chunking.
	split := make([][8][]byte, nCalls)
	for i := 0; i < 8; i++ {
		nb := len(msgs[i]) / 16
		cuts := make([]int, nCalls+1)
		cuts[nCalls] = nb
		for c := 1; c < nCalls; c++ {
			cuts[c] = rng.Intn(nb + 1)
		}
		// sort cuts[1:nCalls]
		for a := 1; a < nCalls; a++ {
			for b := a + 1; b < nCalls; b++ {
				if cuts[b] < cuts[a] {
					cuts[a], cuts[b] = cuts[b], cuts[a]
				}
			}
		}
		for c := 0; c < nCalls; c++ {
			chunk := msgs[i][16*cuts[c] : 16*cuts[c+1]]
			split[c][i] = append([]byte(nil), chunk...)
		}
	}

	states := make([]poly1305x8, len(funcs))
	for k := range states {
		for i := 0; i < 8; i++ {
			states[k].setKey(i, &keys[i])
		}
	}
	for c := 0; c < nCalls; c++ {
		for k, f := range funcs {
			chunks := split[c]
			polyFeed(&states[k], f, &chunks)
			if !bytes.Equal(chunks[0], split[c][0]) {
				t.Fatalf("%s modified its input", names[k])
			}
		}
		for k := 1; k < len(funcs); k++ {
			if states[k] != states[0] {
				t.Fatalf("call %d: %s state %v differs from %s state %v", c, names[k], states[k].h, names[0], states[0].h)
			}
		}
	}
	for k := range funcs {
		for i := 0; i < 8; i++ {
			// Bounds documented in poly_generic.go (h0 < 2^50.1; checked
			// a little more loosely here).
			h0, h1, h2 := states[k].h[0][i], states[k].h[1][i], states[k].h[2][i]
			if h0 >= 1<<44+5<<48 || h1 >= 1<<44 || h2 >= 1<<42 {
				t.Fatalf("%s lane %d: limbs out of bounds: %x %x %x", names[k], i, h0, h1, h2)
			}
			var tag [16]byte
			states[k].sum(i, &tag)
			want := polyRefTag(&keys[i], msgs[i])
			if tag != want {
				t.Fatalf("%s lane %d (%d bytes, %d calls): tag %x, want %x", names[k], i, len(msgs[i]), nCalls, tag, want)
			}
		}
	}
}

func TestPoly1305x8Generic(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	funcs := []polyBlocksFunc{poly1305x8BlocksGeneric}
	names := []string{"generic"}
	for iter := 0; iter < 300; iter++ {
		var keys [8][32]byte
		var msgs [8][]byte
		for i := 0; i < 8; i++ {
			polyRandKey(rng, &keys[i])
			msgs[i] = polyRandMsg(rng, rng.Intn(40))
		}
		polyCheckLanes(t, rng, funcs, names, &keys, &msgs, 1+rng.Intn(3))
	}
}

// TestPoly1305x8GenericWorstCase drives every lane with the largest r and
// all-ones blocks for many blocks.
func TestPoly1305x8GenericWorstCase(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	var keys [8][32]byte
	var msgs [8][]byte
	for i := 0; i < 8; i++ {
		for j := range keys[i] {
			keys[i][j] = 0xff
		}
		msgs[i] = bytes.Repeat([]byte{0xff}, 16*(200+i))
	}
	funcs := []polyBlocksFunc{poly1305x8BlocksGeneric}
	names := []string{"generic"}
	if hasPolyAVX512 {
		funcs = append(funcs, poly1305x8BlocksAVX512)
		names = append(names, "avx512")
	}
	polyCheckLanes(t, rng, funcs, names, &keys, &msgs, 2)
}

func TestPoly1305x8AVX512(t *testing.T) {
	if !hasPolyAVX512 {
		t.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2 (or purego/non-amd64 build)")
	}
	rng := rand.New(rand.NewSource(3))
	funcs := []polyBlocksFunc{poly1305x8BlocksGeneric, poly1305x8BlocksAVX512}
	names := []string{"generic", "avx512"}
	fixed := []int{0, 1, 2, 85, 90, 3, 0, 17}
	for iter := 0; iter < 400; iter++ {
		var keys [8][32]byte
		var msgs [8][]byte
		perm := rng.Perm(8)
		for i := 0; i < 8; i++ {
			polyRandKey(rng, &keys[i])
			n := fixed[perm[i]]
			if iter%2 == 1 {
				n = rng.Intn(100)
			}
			msgs[i] = polyRandMsg(rng, n)
		}
		polyCheckLanes(t, rng, funcs, names, &keys, &msgs, 1+rng.Intn(4))
	}
}

// TestPoly1305x8AVX512NilLanes checks that masked-off lanes with nil
// pointers are never dereferenced and keep their state exactly.
func TestPoly1305x8AVX512NilLanes(t *testing.T) {
	if !hasPolyAVX512 {
		t.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2 (or purego/non-amd64 build)")
	}
	rng := rand.New(rand.NewSource(4))
	var p poly1305x8
	var key [32]byte
	for i := 0; i < 8; i++ {
		rng.Read(key[:])
		p.setKey(i, &key)
	}
	// Non-trivial state in every lane.
	var pre [8][]byte
	for i := range pre {
		pre[i] = polyRandMsg(rng, 3)
	}
	polyFeed(&p, poly1305x8BlocksAVX512, &pre)

	// All lanes empty, all pointers nil.
	var msgs [8]*byte
	var counts [8]uint64
	before := p
	poly1305x8BlocksAVX512(&p, &msgs, &counts)
	if p != before {
		t.Fatal("state changed with all counts zero")
	}

	// Only some lanes active, the others nil.
	for mask := 1; mask < 256; mask += 37 {
		var chunks [8][]byte
		for i := 0; i < 8; i++ {
			if mask&(1<<i) != 0 {
				chunks[i] = polyRandMsg(rng, 1+rng.Intn(5))
			}
		}
		g := p
		polyFeed(&g, poly1305x8BlocksGeneric, &chunks)
		polyFeed(&p, poly1305x8BlocksAVX512, &chunks)
		if p != g {
			t.Fatalf("mask %#x: avx512 state %v, generic %v", mask, p.h, g.h)
		}
		for i := 0; i < 8; i++ {
			if mask&(1<<i) == 0 {
				for k := 0; k < 3; k++ {
					if p.h[k][i] != before.h[k][i] {
						t.Fatalf("mask %#x: inactive lane %d changed", mask, i)
					}
				}
			}
		}
		before = p
	}
}

// TestPoly1305x8Sum checks the final reduction against math/big for limb
// values around the modulus and at the documented bounds.
func TestPoly1305x8Sum(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	P := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 130), big.NewInt(5))
	two128 := new(big.Int).Lsh(big.NewInt(1), 128)
	check := func(h0, h1, h2 uint64) {
		var p poly1305x8
		var key [32]byte
		rng.Read(key[:])
		p.setKey(3, &key)
		p.h[0][3], p.h[1][3], p.h[2][3] = h0, h1, h2
		var tag [16]byte
		p.sum(3, &tag)

		h := new(big.Int).SetUint64(h2)
		h.Lsh(h, 44).Add(h, new(big.Int).SetUint64(h1))
		h.Lsh(h, 44).Add(h, new(big.Int).SetUint64(h0))
		h.Mod(h, P)
		s := new(big.Int).SetBytes(polyReverse(key[16:32]))
		h.Add(h, s).Mod(h, two128)
		var want [16]byte
		b := h.FillBytes(make([]byte, 16))
		copy(want[:], polyReverse(b))
		if tag != want {
			t.Fatalf("h = %x %x %x: tag %x, want %x", h0, h1, h2, tag, want)
		}
	}
	const m44, m42 = 1<<44 - 1, 1<<42 - 1
	// p - 1, p, p + 1, 2^130 - 1 and the maximum allowed limbs.
	check(m44-5, m44, m42)
	check(m44-4, m44, m42)
	check(m44-3, m44, m42)
	check(m44, m44, m42)
	check(m44+5<<48, m44, m42)
	check(1<<52-1, m44, m42)
	check(1<<64-1, m44+1<<20-1, m42)
	check(0, 0, 0)
	for i := 0; i < 10000; i++ {
		h0 := rng.Uint64() & m44
		h1 := rng.Uint64() & m44
		h2 := rng.Uint64() & m42
		if i%2 == 0 {
			h0 += rng.Uint64() & (1<<50 - 1)
		}
		if i%3 == 0 {
			h2 = m42
			h1 = m44
		}
		check(h0, h1, h2)
	}
}

func polyReverse(b []byte) []byte {
	r := make([]byte, len(b))
	for i := range b {
		r[len(b)-1-i] = b[i]
	}
	return r
}

func BenchmarkPoly1305x8(b *testing.B) {
	const blocks = 85 // 1360 bytes per lane
	var bufs [8][]byte
	var msgs [8]*byte
	var counts [8]uint64
	var p poly1305x8
	for i := 0; i < 8; i++ {
		bufs[i] = make([]byte, 16*blocks)
		rand.New(rand.NewSource(int64(i))).Read(bufs[i])
		msgs[i] = &bufs[i][0]
		counts[i] = blocks
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], uint64(i)*0x9e3779b97f4a7c15)
		p.setKey(i, &key)
	}
	b.Run("generic", func(b *testing.B) {
		b.SetBytes(8 * 16 * blocks)
		for i := 0; i < b.N; i++ {
			poly1305x8BlocksGeneric(&p, &msgs, &counts)
		}
	})
	b.Run("avx512", func(b *testing.B) {
		if !hasPolyAVX512 {
			b.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2")
		}
		b.SetBytes(8 * 16 * blocks)
		for i := 0; i < b.N; i++ {
			poly1305x8BlocksAVX512(&p, &msgs, &counts)
		}
	})
	// Reference: x/crypto's poly1305.Sum on ONE 1360-byte message.
	b.Run("xcrypto-1msg", func(b *testing.B) {
		var key [32]byte
		var tag [16]byte
		b.SetBytes(16 * blocks)
		for i := 0; i < b.N; i++ {
			poly1305.Sum(&tag, bufs[0], &key)
		}
	})
}

type poly16BlocksFunc func(p *poly1305x16, msgs *[16]*byte, counts *[16]uint64)

// polyCheckLanes16 is polyCheckLanes for the 16-lane functions: every lane's
// message is split into nCalls chunks (fresh copies, empty chunks as nil
// pointers with count 0), every implementation must produce the same full
// state after every call, and every lane's tag must match x/crypto.
func polyCheckLanes16(t *testing.T, rng *rand.Rand, funcs []poly16BlocksFunc, names []string, keys *[16][32]byte, msgs *[16][]byte, nCalls int) {
	t.Helper()
	split := make([][16][]byte, nCalls)
	for i := 0; i < 16; i++ {
		nb := len(msgs[i]) / 16
		cuts := make([]int, nCalls+1)
		cuts[nCalls] = nb
		for c := 1; c < nCalls; c++ {
			cuts[c] = rng.Intn(nb + 1)
		}
		for a := 1; a < nCalls; a++ {
			for b := a + 1; b < nCalls; b++ {
				if cuts[b] < cuts[a] {
					cuts[a], cuts[b] = cuts[b], cuts[a]
				}
			}
		}
		for c := 0; c < nCalls; c++ {
			chunk := msgs[i][16*cuts[c] : 16*cuts[c+1]]
			split[c][i] = append([]byte(nil), chunk...)
		}
	}

	states := make([]poly1305x16, len(funcs))
	for k := range states {
		for i := 0; i < 16; i++ {
			states[k].setKey(i, &keys[i])
		}
	}
	for c := 0; c < nCalls; c++ {
		for k, f := range funcs {
			var ptrs [16]*byte
			var counts [16]uint64
			for i, ch := range split[c] {
				if len(ch) > 0 {
					ptrs[i] = &ch[0]
					counts[i] = uint64(len(ch) / 16)
				}
			}
			f(&states[k], &ptrs, &counts)
		}
		for k := 1; k < len(funcs); k++ {
			if states[k] != states[0] {
				t.Fatalf("call %d: %s state differs from %s:\n%v\n%v", c, names[k], names[0], states[k], states[0])
			}
		}
	}
	for k := range funcs {
		for i := 0; i < 16; i++ {
			var tag [16]byte
			states[k].sum(i, &tag)
			want := polyRefTag(&keys[i], msgs[i])
			if tag != want {
				t.Fatalf("%s lane %d (%d bytes, %d calls): tag %x, want %x", names[k], i, len(msgs[i]), nCalls, tag, want)
			}
		}
	}
}

func TestPoly1305x16Generic(t *testing.T) {
	rng := rand.New(rand.NewSource(6))
	funcs := []poly16BlocksFunc{poly1305x16BlocksGeneric}
	names := []string{"generic"}
	for iter := 0; iter < 100; iter++ {
		var keys [16][32]byte
		var msgs [16][]byte
		for i := 0; i < 16; i++ {
			polyRandKey(rng, &keys[i])
			msgs[i] = polyRandMsg(rng, rng.Intn(40))
		}
		polyCheckLanes16(t, rng, funcs, names, &keys, &msgs, 1+rng.Intn(3))
	}
}

func TestPoly1305x16AVX512(t *testing.T) {
	if !hasPolyAVX512 {
		t.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2 (or purego/non-amd64 build)")
	}
	rng := rand.New(rand.NewSource(7))
	funcs := []poly16BlocksFunc{poly1305x16BlocksGeneric, poly1305x16BlocksAVX512}
	names := []string{"generic", "avx512"}
	fixed := []int{0, 1, 2, 85, 90, 3, 0, 17, 85, 85, 90, 1, 2, 0, 40, 85}
	for iter := 0; iter < 400; iter++ {
		var keys [16][32]byte
		var msgs [16][]byte
		perm := rng.Perm(16)
		for i := 0; i < 16; i++ {
			polyRandKey(rng, &keys[i])
			var n int
			switch iter % 4 {
			case 0: // fixed set of counts, permuted
				n = fixed[perm[i]]
			case 1: // random
				n = rng.Intn(100)
			case 2: // WireGuard-like: mostly full-size, one shorter
				n = 90
				if i == perm[0] {
					n = rng.Intn(91)
				}
			case 3: // mostly short, some empty
				n = rng.Intn(3)
			}
			msgs[i] = polyRandMsg(rng, n)
		}
		// 1 to 4 calls (at least 2 on every other iteration).
		polyCheckLanes16(t, rng, funcs, names, &keys, &msgs, 1+iter%2+rng.Intn(3))
	}
}

// TestPoly1305x16AVX512Twice mimics the real use: one call with the packet
// body, then a second call with 1 or 2 blocks per lane.
func TestPoly1305x16AVX512Twice(t *testing.T) {
	if !hasPolyAVX512 {
		t.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2 (or purego/non-amd64 build)")
	}
	rng := rand.New(rand.NewSource(8))
	for iter := 0; iter < 200; iter++ {
		var g, a poly1305x16
		var keys [16][32]byte
		var first, second [16][]byte
		var p1, p2 [16]*byte
		var c1, c2 [16]uint64
		for i := 0; i < 16; i++ {
			polyRandKey(rng, &keys[i])
			g.setKey(i, &keys[i])
			a.setKey(i, &keys[i])
			n := 90
			if rng.Intn(4) == 0 {
				n = rng.Intn(91)
			}
			first[i] = polyRandMsg(rng, n)
			second[i] = polyRandMsg(rng, 1+rng.Intn(2))
			if n > 0 {
				p1[i], c1[i] = &first[i][0], uint64(n)
			}
			p2[i], c2[i] = &second[i][0], uint64(len(second[i])/16)
		}
		for _, x := range []struct {
			p *[16]*byte
			c *[16]uint64
		}{{&p1, &c1}, {&p2, &c2}} {
			poly1305x16BlocksGeneric(&g, x.p, x.c)
			poly1305x16BlocksAVX512(&a, x.p, x.c)
			if a != g {
				t.Fatalf("iter %d: avx512 state differs from generic", iter)
			}
		}
		for i := 0; i < 16; i++ {
			var tag [16]byte
			a.sum(i, &tag)
			want := polyRefTag(&keys[i], append(append([]byte(nil), first[i]...), second[i]...))
			if tag != want {
				t.Fatalf("iter %d lane %d: tag %x, want %x", iter, i, tag, want)
			}
		}
	}
}

// TestPoly1305x16AVX512NilLanes checks that lanes with count 0 and nil
// pointers are never dereferenced and keep their state exactly, in either
// group.
func TestPoly1305x16AVX512NilLanes(t *testing.T) {
	if !hasPolyAVX512 {
		t.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2 (or purego/non-amd64 build)")
	}
	rng := rand.New(rand.NewSource(9))
	var p poly1305x16
	var key [32]byte
	for i := 0; i < 16; i++ {
		rng.Read(key[:])
		p.setKey(i, &key)
	}
	// Non-trivial state in every lane.
	var bufs [16][]byte
	var msgs [16]*byte
	var counts [16]uint64
	for i := range bufs {
		bufs[i] = polyRandMsg(rng, 3)
		msgs[i], counts[i] = &bufs[i][0], 3
	}
	poly1305x16BlocksAVX512(&p, &msgs, &counts)

	// All lanes empty, all pointers nil.
	msgs, counts = [16]*byte{}, [16]uint64{}
	before := p
	poly1305x16BlocksAVX512(&p, &msgs, &counts)
	if p != before {
		t.Fatal("state changed with all counts zero")
	}

	// Only some lanes active, the others nil; includes masks with one
	// whole group idle.
	for _, mask := range []int{1, 0x100, 0xff, 0xff00, 0x8001, 0x7ffe, 0xffff} {
		for k := 0; k < 2; k++ {
			m := mask
			if k == 1 {
				m = mask ^ rng.Intn(1<<16)
			}
			for i := 0; i < 16; i++ {
				msgs[i], counts[i] = nil, 0
				if m&(1<<i) != 0 {
					n := 1 + rng.Intn(5)
					bufs[i] = polyRandMsg(rng, n)
					msgs[i], counts[i] = &bufs[i][0], uint64(n)
				}
			}
			g := p
			poly1305x16BlocksGeneric(&g, &msgs, &counts)
			poly1305x16BlocksAVX512(&p, &msgs, &counts)
			if p != g {
				t.Fatalf("mask %#x: avx512 state differs from generic", m)
			}
			for i := 0; i < 16; i++ {
				if m&(1<<i) == 0 {
					for l := 0; l < 3; l++ {
						if p[i>>3].h[l][i&7] != before[i>>3].h[l][i&7] {
							t.Fatalf("mask %#x: inactive lane %d changed", m, i)
						}
					}
				}
			}
			before = p
		}
	}
}

// BenchmarkPoly1305x16 is 16 lanes x 85 blocks; compare ns/op with
// BenchmarkPoly1305x8 (8 lanes x 85 blocks).
func BenchmarkPoly1305x16(b *testing.B) {
	const blocks = 85 // 1360 bytes per lane
	var bufs [16][]byte
	var msgs [16]*byte
	var counts [16]uint64
	var p poly1305x16
	for i := 0; i < 16; i++ {
		bufs[i] = make([]byte, 16*blocks)
		rand.New(rand.NewSource(int64(i))).Read(bufs[i])
		msgs[i] = &bufs[i][0]
		counts[i] = blocks
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], uint64(i)*0x9e3779b97f4a7c15)
		p.setKey(i, &key)
	}
	b.Run("generic", func(b *testing.B) {
		b.SetBytes(16 * 1360)
		for i := 0; i < b.N; i++ {
			poly1305x16BlocksGeneric(&p, &msgs, &counts)
		}
	})
	b.Run("avx512", func(b *testing.B) {
		if !hasPolyAVX512 {
			b.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2")
		}
		b.SetBytes(16 * 1360)
		for i := 0; i < b.N; i++ {
			poly1305x16BlocksAVX512(&p, &msgs, &counts)
		}
	})
}

// TestPoly1305x16AVX512WorstCase drives every lane with the largest r and
// all-ones blocks (the carry bounds the byte shifts rely on).
func TestPoly1305x16AVX512WorstCase(t *testing.T) {
	if !hasPolyAVX512 {
		t.Skip("CPU lacks AVX-512F/IFMA/BW/VBMI2 (or purego/non-amd64 build)")
	}
	rng := rand.New(rand.NewSource(10))
	var keys [16][32]byte
	var msgs [16][]byte
	for i := 0; i < 16; i++ {
		for j := range keys[i] {
			keys[i][j] = 0xff
		}
		msgs[i] = bytes.Repeat([]byte{0xff}, 16*(200+i))
	}
	funcs := []poly16BlocksFunc{poly1305x16BlocksGeneric, poly1305x16BlocksAVX512}
	names := []string{"generic", "avx512"}
	polyCheckLanes16(t, rng, funcs, names, &keys, &msgs, 2)
}
