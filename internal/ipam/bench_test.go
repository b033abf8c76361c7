package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// benchPool returns a pool holding live addresses. contiguous: the first
// `live` usable addresses (one span). fragmented: every other address of the
// first 2*live (live spans, the worst case for the sorted span slice).
func benchPool(b *testing.B, prefix string, live int, fragmented bool) (*Pool, []netip.Addr) {
	b.Helper()
	p, err := NewPool(netip.MustParsePrefix(prefix))
	if err != nil {
		b.Fatal(err)
	}
	n := live
	if fragmented {
		n = 2 * live
	}
	var all []netip.Addr
	for range n {
		a, err := p.Allocate()
		if err != nil {
			b.Fatal(err)
		}
		all = append(all, a)
	}
	if !fragmented {
		return p, all
	}
	var kept []netip.Addr
	for i, a := range all {
		if i%2 == 1 {
			if err := p.Release(a); err != nil {
				b.Fatal(err)
			}
			continue
		}
		kept = append(kept, a)
	}
	return p, kept
}

// BenchmarkAllocateRelease measures one Release plus one Allocate (lowest
// free) with 1k and 10k live addresses.
//
//   - contiguous: the live addresses form one run; a random one is released
//     and Allocate refills the hole.
//   - fragmented: every other address is live (one span per address, the
//     worst layout for the sorted span slice) and the LOWEST live address is
//     released and reallocated, so both operations shift the whole slice.
func BenchmarkAllocateRelease(b *testing.B) {
	for _, prefix := range []string{"10.200.0.0/16", "fd00:200:0:7::/64"} {
		for _, live := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/live=%d/contiguous", prefix, live), func(b *testing.B) {
				p, held := benchPool(b, prefix, live, false)
				r := rand.New(rand.NewPCG(1, 2))
				for b.Loop() {
					i := r.IntN(len(held))
					if err := p.Release(held[i]); err != nil {
						b.Fatal(err)
					}
					a, err := p.Allocate()
					if err != nil || a != held[i] {
						b.Fatalf("Allocate = %v, %v; want the released %v back", a, err, held[i])
					}
				}
			})
			b.Run(fmt.Sprintf("%s/live=%d/fragmented", prefix, live), func(b *testing.B) {
				p, held := benchPool(b, prefix, live, true)
				if got := len(p.alloc.spans); got != live {
					b.Fatalf("fragmented layout has %d spans, want %d", got, live)
				}
				for b.Loop() {
					if err := p.Release(held[0]); err != nil {
						b.Fatal(err)
					}
					a, err := p.Allocate()
					if err != nil || a != held[0] {
						b.Fatalf("Allocate = %v, %v; want the released %v back", a, err, held[0])
					}
				}
			})
		}
	}
}

// BenchmarkRestore measures rebuilding a pool from a persisted live set in
// random order (AllocateSpecific per address).
func BenchmarkRestore(b *testing.B) {
	for _, live := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("live=%d", live), func(b *testing.B) {
			_, held := benchPool(b, "10.200.0.0/16", live, true)
			r := rand.New(rand.NewPCG(1, 2))
			r.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			for b.Loop() {
				p, _ := NewPool(netip.MustParsePrefix("10.200.0.0/16"))
				for _, a := range held {
					if err := p.AllocateSpecific(a); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkPlaceServiceSubnet places a service subnet in a /16 with 1000
// /28s already taken around the hashed slot and elsewhere.
func BenchmarkPlaceServiceSubnet(b *testing.B) {
	cluster := netip.MustParsePrefix("10.200.0.0/16")
	var taken []netip.Prefix
	for i := range uint64(1000) {
		s, _ := SliceAt(cluster, 28, (750+i)%4096) // a run starting at web/0's slot
		taken = append(taken, s)
	}
	for b.Loop() {
		if _, err := PlaceServiceSubnet(cluster, 28, "web", "0", taken); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCarve compares CarveSubnet (per-address probe) with Pool.Carve on
// a /24 slice with 100 live addresses and 8 subnets already carved.
func BenchmarkCarve(b *testing.B) {
	setup := func(b *testing.B) *Pool {
		p, _ := benchPool(b, "10.200.3.0/24", 100, false)
		for range 8 {
			if _, err := p.Carve(28, nil); err != nil {
				b.Fatal(err)
			}
		}
		return p
	}
	b.Run("CarveSubnet", func(b *testing.B) {
		p := setup(b)
		for b.Loop() {
			if _, ok := CarveSubnet(p.Prefix(), 28, p.Excluded(), p.IsAllocated); !ok {
				b.Fatal("no room")
			}
		}
	})
	b.Run("Pool.Carve", func(b *testing.B) {
		p := setup(b)
		for b.Loop() {
			sub, err := p.Carve(28, nil)
			if err != nil {
				b.Fatal(err)
			}
			p.Include(sub)
		}
	})
}
