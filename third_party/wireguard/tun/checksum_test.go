package tun

import (
	"encoding/binary"
	"fmt"
	"math/rand"
	"testing"

	"golang.org/x/sys/unix"
)

func checksumRef(b []byte, initial uint16) uint16 {
	ac := uint64(initial)

	for len(b) >= 2 {
		ac += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		ac += uint64(b[0]) << 8
	}

	for (ac >> 16) > 0 {
		ac = (ac >> 16) + (ac & 0xffff)
	}
	return uint16(ac)
}

func pseudoHeaderChecksumRefNoFold(protocol uint8, srcAddr, dstAddr []byte, totalLen uint16) uint16 {
	sum := checksumRef(srcAddr, 0)
	sum = checksumRef(dstAddr, sum)
	sum = checksumRef([]byte{0, protocol}, sum)
	tmp := make([]byte, 2)
	binary.BigEndian.PutUint16(tmp, totalLen)
	return checksumRef(tmp, sum)
}

func TestChecksum(t *testing.T) {
	for length := 0; length <= 9001; length++ {
		buf := make([]byte, length)
		rng := rand.New(rand.NewSource(1))
		rng.Read(buf)
		csum := checksum(buf, 0x1234)
		csumRef := checksumRef(buf, 0x1234)
		if csum != csumRef {
			t.Error("Expected checksum", csumRef, "got", csum)
		}
	}
}

func TestPseudoHeaderChecksum(t *testing.T) {
	for _, addrLen := range []int{4, 16} {
		for length := 0; length <= 9001; length++ {
			srcAddr := make([]byte, addrLen)
			dstAddr := make([]byte, addrLen)
			buf := make([]byte, length)
			rng := rand.New(rand.NewSource(1))
			rng.Read(srcAddr)
			rng.Read(dstAddr)
			rng.Read(buf)
			phSum := pseudoHeaderChecksumNoFold(unix.IPPROTO_TCP, srcAddr, dstAddr, uint16(length))
			csum := checksum(buf, phSum)
			phSumRef := pseudoHeaderChecksumRefNoFold(unix.IPPROTO_TCP, srcAddr, dstAddr, uint16(length))
			csumRef := checksumRef(buf, phSumRef)
			if csum != csumRef {
				t.Error("Expected checksumRef", csumRef, "got", csum)
			}
		}
	}
}

func BenchmarkChecksum(b *testing.B) {
	lengths := []int{
		64,
		128,
		256,
		512,
		1024,
		1500,
		2048,
		4096,
		8192,
		9000,
		9001,
	}

	for _, length := range lengths {
		b.Run(fmt.Sprintf("%d", length), func(b *testing.B) {
			buf := make([]byte, length)
			rng := rand.New(rand.NewSource(1))
			rng.Read(buf)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				checksum(buf, 0)
			}
		})
	}
}

func foldChecksum(ac uint64) uint16 {
	ac = (ac >> 16) + (ac & 0xffff)
	ac = (ac >> 16) + (ac & 0xffff)
	ac = (ac >> 16) + (ac & 0xffff)
	ac = (ac >> 16) + (ac & 0xffff)
	return uint16(ac)
}

func checksumTestInitials(rng *rand.Rand) []uint64 {
	return []uint64{0, 1, 0xffff, 0x10000, 0xffffffff, 1<<63 - 1, 1 << 63, ^uint64(0), rng.Uint64(), rng.Uint64(), rng.Uint64()}
}

// TestChecksumNoFoldMatchesGeneric checks that checksumNoFold (which may use
// SIMD) and checksumNoFoldSIMD (SIMD at every length) fold to the same 16-bit
// result as checksumNoFoldGeneric for every length 0..2100, every start
// offset 0..7 and a range of initial values.
func TestChecksumNoFoldMatchesGeneric(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	ones := make([]byte, 2100+8)
	for i := range ones {
		ones[i] = 0xff
	}
	zeros := make([]byte, 2100+8)
	random := make([]byte, 2100+8)
	rng.Read(random)
	initials := checksumTestInitials(rng)
	for _, tc := range []struct {
		name string
		buf  []byte
	}{{"random", random}, {"ones", ones}, {"zeros", zeros}} {
		for offset := 0; offset < 8; offset++ {
			for length := 0; length <= 2100; length++ {
				b := tc.buf[offset : offset+length]
				for _, initial := range initials {
					want := foldChecksum(checksumNoFoldGeneric(b, initial))
					if got := checksum(b, initial); got != want {
						t.Fatalf("%s offset=%d len=%d initial=%#x: checksum=%#04x, generic=%#04x", tc.name, offset, length, initial, got, want)
					}
					if got := foldChecksum(checksumNoFoldSIMD(b, initial)); got != want {
						t.Fatalf("%s offset=%d len=%d initial=%#x: SIMD=%#04x, generic=%#04x", tc.name, offset, length, initial, got, want)
					}
					if got := checksumRef(b, foldChecksum(initial)); length <= 64 && initial <= 0xffff && got != want {
						t.Fatalf("%s offset=%d len=%d initial=%#x: ref=%#04x, generic=%#04x", tc.name, offset, length, initial, got, want)
					}
				}
			}
		}
	}
}

// TestChecksumNoFoldChained checks that feeding the unfolded result back in
// as initial (as pseudoHeaderChecksumNoFold and its callers do) gives the same
// folded result as the generic code.
func TestChecksumNoFoldChained(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	buf := make([]byte, 4*65535+8)
	rng.Read(buf)
	for i := 0; i < 2000; i++ {
		initial := checksumTestInitials(rng)[rng.Intn(11)]
		acNew, acGen := initial, initial
		start := rng.Intn(8)
		for j := 0; j < 4; j++ {
			n := rng.Intn(3000)
			if rng.Intn(20) == 0 {
				n = rng.Intn(65535 - 3*3000)
			}
			if rng.Intn(2) == 0 {
				n &^= 1 // keep later pieces at even offsets, as real callers do
			}
			b := buf[start : start+n]
			acNew = checksumNoFold(b, acNew)
			acGen = checksumNoFoldGeneric(b, acGen)
			start += n
		}
		if got, want := foldChecksum(acNew), foldChecksum(acGen); got != want {
			t.Fatalf("iteration %d: got %#04x, want %#04x", i, got, want)
		}
	}
}

func TestChecksumNoFoldLarge(t *testing.T) {
	rng := rand.New(rand.NewSource(4))
	for _, fill := range []byte{0xff, 0} {
		buf := make([]byte, 1<<20+37)
		for i := range buf {
			buf[i] = fill
		}
		if fill == 0 {
			rng.Read(buf)
		}
		for _, initial := range checksumTestInitials(rng) {
			if got, want := checksum(buf, initial), foldChecksum(checksumNoFoldGeneric(buf, initial)); got != want {
				t.Fatalf("fill=%#x initial=%#x: got %#04x, want %#04x", fill, initial, got, want)
			}
		}
	}
}

func BenchmarkChecksumNoFold(b *testing.B) {
	for _, length := range []int{16, 32, 64, 128, 256, 1400, 9000, 65535} {
		buf := make([]byte, length)
		rand.New(rand.NewSource(1)).Read(buf)
		for _, impl := range []struct {
			name string
			fn   func([]byte, uint64) uint64
		}{
			{"new", checksumNoFold},
			{"simd", checksumNoFoldSIMD},
			{"generic", checksumNoFoldGeneric},
		} {
			b.Run(fmt.Sprintf("%s/%d", impl.name, length), func(b *testing.B) {
				b.SetBytes(int64(length))
				var sink uint64
				for i := 0; i < b.N; i++ {
					sink += impl.fn(buf, sink)
				}
				benchSink = sink
			})
		}
	}
}

var benchSink uint64
