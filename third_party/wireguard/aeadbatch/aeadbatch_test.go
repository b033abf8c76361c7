package aeadbatch

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// batchPaths are the ways a Batch can seal: the vector kernels (where the
// CPU has them), the generic kernels (same batch logic, any CPU) and the
// one-by-one fallback.
func batchPaths(t testing.TB) map[string]func() *Batch {
	paths := map[string]func() *Batch{
		"generic": func() *Batch { return &Batch{k: genericKernels} },
		"scalar":  func() *Batch { return &Batch{k: genericKernels, forceScalar: true} },
	}
	if hasVector {
		paths["avx512"] = func() *Batch { return &Batch{k: vectorKernels} }
	} else {
		t.Log("no AVX-512 IFMA on this CPU: the vector kernels are not exercised")
	}
	return paths
}

// lengths a batch draws from: around every block and lane boundary, and
// WireGuard's sizes.
var interesting = []int{0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 1024, 1350, 1420, 1424, 1440, 4096, 9000}

func randomBatch(r *rand.Rand, n int) (key []byte, msgs []Message, plain [][]byte) {
	key = make([]byte, KeySize)
	fill(r, key)
	msgs = make([]Message, n)
	plain = make([][]byte, n)
	for i := range msgs {
		l := interesting[r.IntN(len(interesting))]
		if r.IntN(2) == 0 {
			l = r.IntN(1500)
		}
		plain[i] = make([]byte, l)
		fill(r, plain[i])
		fill(r, msgs[i].Nonce[:])
		// Data at an odd offset in a larger buffer: the kernels must not
		// assume alignment or read past the end. Every other message has
		// its tag right behind its data (wireguard-go's layout, which
		// x/crypto seals in place), the others in a buffer of its own.
		buf := make([]byte, l+1+TagSize)
		if i%2 == 0 {
			msgs[i].Data = buf[1 : 1+l]
			msgs[i].Tag = buf[1+l:]
		} else {
			msgs[i].Data = buf[1 : 1+l : 1+l]
			msgs[i].Tag = make([]byte, TagSize)
		}
		copy(msgs[i].Data, plain[i])
	}
	return key, msgs, plain
}

func fill(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

func TestSealMatchesXCryptoAndOpensBack(t *testing.T) {
	for name, newBatch := range batchPaths(t) {
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, uint64(len(name))))
			b := newBatch()
			for _, n := range []int{1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 64, 128, 130} {
				for round := 0; round < 8; round++ {
					key, msgs, plain := randomBatch(r, n)
					ref, _ := chacha20poly1305.New(key)
					k, err := NewKey(key)
					if err != nil {
						t.Fatal(err)
					}
					b.Seal(k, msgs)
					for i := range msgs {
						want := ref.Seal(nil, msgs[i].Nonce[:], plain[i], nil)
						got := append(append([]byte{}, msgs[i].Data...), msgs[i].Tag...)
						if !bytes.Equal(got, want) {
							t.Fatalf("batch of %d, message %d (%d bytes): sealed %x…, x/crypto %x…", n, i, len(plain[i]), head(got), head(want))
						}
					}
					b.Open(k, msgs)
					for i := range msgs {
						if msgs[i].Err != nil {
							t.Fatalf("batch of %d, message %d (%d bytes): %v", n, i, len(plain[i]), msgs[i].Err)
						}
						if !bytes.Equal(msgs[i].Data, plain[i]) {
							t.Fatalf("batch of %d, message %d: opened to something else", n, i)
						}
					}
				}
			}
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 24)] }

func TestOpenRejectsEachTamperedMessageAlone(t *testing.T) {
	for name, newBatch := range batchPaths(t) {
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(2, uint64(len(name))))
			b := newBatch()
			for _, n := range []int{1, 3, 8, 13} {
				for victim := 0; victim < n; victim++ {
					for _, where := range []string{"data", "tag", "nonce"} {
						key, msgs, plain := randomBatch(r, n)
						k, _ := NewKey(key)
						b.Seal(k, msgs)
						m := &msgs[victim]
						switch {
						case where == "data" && len(m.Data) > 0:
							m.Data[r.IntN(len(m.Data))] ^= 1 << r.IntN(8)
						case where == "nonce":
							m.Nonce[r.IntN(NonceSize)] ^= 1 << r.IntN(8)
						default:
							m.Tag[r.IntN(TagSize)] ^= 1 << r.IntN(8)
						}
						tampered := append([]byte{}, m.Data...)
						b.Open(k, msgs)
						for i := range msgs {
							switch {
							case i == victim && msgs[i].Err != ErrOpen:
								t.Fatalf("batch of %d: message %d with its %s changed opened (err %v)", n, i, where, msgs[i].Err)
							case i == victim && !bytes.Equal(msgs[i].Data, tampered) && !((name == "scalar" || n < minVectorGroup) && tagFollows(&msgs[i]) && allZero(msgs[i].Data)):
								t.Fatalf("batch of %d: message %d failed but its data was changed (not cleared either)", n, i)
							case i != victim && (msgs[i].Err != nil || !bytes.Equal(msgs[i].Data, plain[i])):
								t.Fatalf("batch of %d: message %d, untouched, did not open (err %v)", n, i, msgs[i].Err)
							}
						}
					}
				}
			}
		})
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Where the vector kernels do not run (other CPUs, groups of one or two
// packets), x/crypto seals and opens wireguard-go's packets in place, as
// upstream does: nothing is allocated or copied per packet beyond what
// x/crypto itself allocates (its generic code does, its assembly not).
func TestOneByOneInPlaceAllocatesNoMoreThanXCrypto(t *testing.T) {
	k, _ := NewKey(make([]byte, KeySize))
	buf := make([]byte, 1424+TagSize)
	var nonce [NonceSize]byte
	upstream := testing.AllocsPerRun(100, func() {
		k.AEAD.Seal(buf[:0], nonce[:], buf[:1424], nil)
		if _, err := k.AEAD.Open(buf[:0], nonce[:], buf, nil); err != nil {
			t.Fatal(err)
		}
	})
	msgs := []Message{{Data: buf[:1424], Tag: buf[1424:]}}
	b := &Batch{k: genericKernels, forceScalar: true}
	ours := testing.AllocsPerRun(100, func() {
		b.Seal(k, msgs)
		b.Open(k, msgs)
		if msgs[0].Err != nil {
			t.Fatal(msgs[0].Err)
		}
	})
	if ours > upstream {
		t.Fatalf("sealing and opening one packet in place allocated %v times, x/crypto alone %v", ours, upstream)
	}
}

func TestNewKeyRefusesWrongSizes(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := NewKey(make([]byte, n)); err == nil {
			t.Errorf("NewKey accepted a %d-byte key", n)
		}
	}
}

func BenchmarkSeal(b *testing.B) {
	for _, size := range []int{1424, 64} {
		for _, n := range []int{1, 8, 64} {
			for name, newBatch := range map[string]func() *Batch{
				"batch":   func() *Batch { return &Batch{} },
				"xcrypto": func() *Batch { return &Batch{k: genericKernels, forceScalar: true} },
			} {
				b.Run(fmt.Sprintf("%s/%dx%d", name, n, size), func(b *testing.B) {
					key := make([]byte, KeySize)
					k, _ := NewKey(key)
					msgs := make([]Message, n)
					for i := range msgs {
						buf := make([]byte, size+TagSize)
						msgs[i].Data, msgs[i].Tag = buf[:size], buf[size:]
						msgs[i].Nonce[4] = byte(i)
					}
					bt := newBatch()
					b.SetBytes(int64(n * size))
					for range b.N {
						bt.Seal(k, msgs)
					}
				})
			}
		}
	}
}
