package ipam

import (
	"net/netip"
	"slices"
	"testing"
)

// checkSpans verifies the spanSet invariants: sorted, disjoint, non-adjacent.
func checkSpans(t *testing.T, s *spanSet) {
	t.Helper()
	for i, sp := range s.spans {
		if sp.last.less(sp.first) {
			t.Fatalf("span %d inverted: %v", i, sp)
		}
		if i > 0 {
			prev := s.spans[i-1]
			if !prev.last.inc().less(sp.first) {
				t.Fatalf("spans %d and %d overlap or touch: %v %v", i-1, i, prev, sp)
			}
		}
	}
}

// TestSpanSetMatchesModel drives a spanSet and a plain map through random
// adds and removes in a small window (and at the very top of the 128-bit
// space, where last+1 wraps) and compares every query.
func TestSpanSetMatchesModel(t *testing.T) {
	r := newRand(t)
	for _, base := range []u128{{}, u128Max.sub(u128From64(63))} {
		var s spanSet
		model := map[u128]bool{}
		at := func(i uint64) u128 { return base.add(u128From64(i)) }
		for step := range 5000 {
			a := uint64(r.IntN(64))
			b := min(a+uint64(r.IntN(6)), 63)
			if r.IntN(2) == 0 {
				s.add(at(a), at(b))
				for i := a; i <= b; i++ {
					model[at(i)] = true
				}
			} else {
				s.remove(at(a), at(b))
				for i := a; i <= b; i++ {
					delete(model, at(i))
				}
			}
			checkSpans(t, &s)
			for i := range uint64(64) {
				if s.contains(at(i)) != model[at(i)] {
					t.Fatalf("step %d: contains(base+%d) = %v, model %v", step, i, !model[at(i)], model[at(i)])
				}
			}
			q := uint64(r.IntN(64))
			got, ok := s.nextFree(at(q))
			want, wantOK := at(q), true
			for model[want] {
				if want == u128Max {
					wantOK = false
					break
				}
				want = want.inc()
			}
			if ok != wantOK || (ok && got != want) {
				t.Fatalf("step %d: nextFree(base+%d) = %v,%v want %v,%v", step, q, got, ok, want, wantOK)
			}
			lo, hi := uint64(r.IntN(64)), uint64(r.IntN(64))
			if hi < lo {
				lo, hi = hi, lo
			}
			var wantCount uint64
			var wantLow u128
			foundLow := false
			for i := lo; i <= hi; i++ {
				if model[at(i)] {
					wantCount++
				}
			}
			for _, sp := range s.spans {
				if !sp.last.less(at(lo)) && !at(hi).less(sp.first) {
					wantLow, foundLow = sp.first, true
					break
				}
			}
			if got := s.countWithin(at(lo), at(hi)); got != u128From64(wantCount) {
				t.Fatalf("step %d: countWithin = %v, want %d", step, got, wantCount)
			}
			if got, ok := s.lowestOverlapping(at(lo), at(hi)); ok != foundLow || got != wantLow {
				t.Fatalf("step %d: lowestOverlapping = %v,%v want %v,%v", step, got, ok, wantLow, foundLow)
			}
			var wantHigh u128
			foundHigh := false
			for _, sp := range s.spans {
				if !sp.last.less(at(lo)) && !at(hi).less(sp.first) {
					wantHigh, foundHigh = sp.last, true
				}
			}
			if got, ok := s.highestOverlapping(at(lo), at(hi)); ok != foundHigh || got != wantHigh {
				t.Fatalf("step %d: highestOverlapping = %v,%v want %v,%v", step, got, ok, wantHigh, foundHigh)
			}
		}
	}
}

func TestSpanSetCountSaturates(t *testing.T) {
	var s spanSet
	s.add(u128{}, u128Max)
	if got := s.countWithin(u128{}, u128Max); got != u128Max {
		t.Errorf("count of the whole space = %v, want saturated", got)
	}
	if _, ok := s.nextFree(u128{}); ok {
		t.Error("nextFree in a full space reported a free address")
	}
}

// TestSpansOfMatchesAdd checks the sort-and-merge construction against
// inserting the same prefixes one at a time, with prefixes of both families,
// invalid ones, duplicates, nested and adjacent ones.
func TestSpansOfMatchesAdd(t *testing.T) {
	r := newRand(t)
	for range 500 {
		var prefixes []netip.Prefix
		var want spanSet
		for range r.IntN(20) {
			var p netip.Prefix
			switch r.IntN(10) {
			case 0:
				p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 15: byte(r.IntN(256))}), 120+r.IntN(9))
			case 1:
				p = netip.Prefix{}
			default:
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, 3, byte(r.IntN(256))}), 24+r.IntN(9)).Masked()
			}
			prefixes = append(prefixes, p)
			if p.IsValid() && p.Addr().Is4() {
				want.add(prefixRange(p))
			}
		}
		got := spansOf(prefixes, true)
		checkSpans(t, &got)
		if !slices.Equal(got.spans, want.spans) {
			t.Fatalf("spansOf(%v) = %v, want %v", prefixes, got.spans, want.spans)
		}
	}
	top := spansOf([]netip.Prefix{netip.MustParsePrefix("ffff::/16"), netip.MustParsePrefix("fffe::/16")}, false)
	if len(top.spans) != 1 || top.spans[0].last != u128Max {
		t.Errorf("adjacent prefixes at the top of the space: %v", top.spans)
	}
}
