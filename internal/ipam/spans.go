package ipam

import (
	"net/netip"
	"slices"
	"sort"
)

// span is the closed address range [first, last].
type span struct{ first, last u128 }

// spanSet is a set of addresses stored as sorted, disjoint, non-adjacent
// spans. Allocating the lowest free address mostly extends the first span, so a
// pool with thousands of contiguous allocations holds a handful of spans, and
// every lookup is a binary search. Releases in the middle split a span; the
// cost of that is one slice insertion (see the fragmented benchmarks).
type spanSet struct{ spans []span }

// firstEndingAtOrAfter returns the index of the first span whose last address
// is >= x.
func (s *spanSet) firstEndingAtOrAfter(x u128) int {
	return sort.Search(len(s.spans), func(i int) bool { return !s.spans[i].last.less(x) })
}

func (s *spanSet) contains(x u128) bool {
	i := s.firstEndingAtOrAfter(x)
	return i < len(s.spans) && !x.less(s.spans[i].first)
}

// add inserts [first, last], merging with every span it overlaps or touches.
func (s *spanSet) add(first, last u128) {
	// i: first span that overlaps or ends right before first.
	i := sort.Search(len(s.spans), func(k int) bool {
		l := s.spans[k].last
		return !l.less(first) || (l != u128Max && l.inc() == first)
	})
	// j: first span that starts strictly after last+1.
	j := sort.Search(len(s.spans), func(k int) bool {
		f := s.spans[k].first
		return last.less(f) && !(last != u128Max && last.inc() == f)
	})
	merged := span{first, last}
	if i < j {
		if s.spans[i].first.less(merged.first) {
			merged.first = s.spans[i].first
		}
		if merged.last.less(s.spans[j-1].last) {
			merged.last = s.spans[j-1].last
		}
	}
	s.spans = slices.Replace(s.spans, i, j, merged)
}

// remove deletes [first, last] from the set, splitting spans as needed.
func (s *spanSet) remove(first, last u128) {
	i := s.firstEndingAtOrAfter(first)
	j := sort.Search(len(s.spans), func(k int) bool { return last.less(s.spans[k].first) })
	if i >= j {
		return
	}
	var pieces [2]span
	n := 0
	if s.spans[i].first.less(first) {
		pieces[n] = span{s.spans[i].first, first.dec()}
		n++
	}
	if last.less(s.spans[j-1].last) {
		pieces[n] = span{last.inc(), s.spans[j-1].last}
		n++
	}
	s.spans = slices.Replace(s.spans, i, j, pieces[:n]...)
}

// nextFree returns the lowest address >= x that is not in the set; ok is false
// when every address from x to the top of the 128-bit space is in the set.
func (s *spanSet) nextFree(x u128) (u128, bool) {
	i := s.firstEndingAtOrAfter(x)
	if i == len(s.spans) || x.less(s.spans[i].first) {
		return x, true
	}
	if s.spans[i].last == u128Max {
		return u128{}, false
	}
	// Spans never touch, so the address after a span is free.
	return s.spans[i].last.inc(), true
}

// lowestOverlapping returns the first address of the lowest span that
// intersects [first, last].
func (s *spanSet) lowestOverlapping(first, last u128) (u128, bool) {
	i := s.firstEndingAtOrAfter(first)
	if i < len(s.spans) && !last.less(s.spans[i].first) {
		return s.spans[i].first, true
	}
	return u128{}, false
}

// countWithin returns how many addresses of [first, last] are in the set,
// saturating at the top of the 128-bit range.
func (s *spanSet) countWithin(first, last u128) u128 {
	var total u128
	for i := s.firstEndingAtOrAfter(first); i < len(s.spans); i++ {
		sp := s.spans[i]
		if last.less(sp.first) {
			break
		}
		lo, hi := sp.first, sp.last
		if lo.less(first) {
			lo = first
		}
		if last.less(hi) {
			hi = last
		}
		n := hi.sub(lo).inc() // wraps to 0 only for the full 2^128 range
		if n.isZero() {
			return u128Max
		}
		sum := total.add(n)
		if sum.less(total) {
			return u128Max
		}
		total = sum
	}
	return total
}

// each yields every address in the set, in ascending order.
func (s *spanSet) each(yield func(u128) bool) {
	for _, sp := range s.spans {
		for x := sp.first; ; x = x.inc() {
			if !yield(x) {
				return
			}
			if x == sp.last {
				break
			}
		}
	}
}

// spansOf returns the union of the prefixes of one family as a spanSet,
// ignoring invalid prefixes and prefixes of the other family. Sorting first
// makes it O(n log n) however the prefixes are ordered.
func spansOf(prefixes []netip.Prefix, is4 bool) spanSet {
	var raw []span
	for _, p := range prefixes {
		if p.IsValid() && p.Addr().Is4() == is4 {
			f, l := prefixRange(p)
			raw = append(raw, span{f, l})
		}
	}
	slices.SortFunc(raw, func(a, b span) int { return a.first.cmp(b.first) })
	var s spanSet
	for _, sp := range raw {
		if n := len(s.spans); n > 0 {
			top := &s.spans[n-1]
			if !top.last.less(sp.first) || (top.last != u128Max && top.last.inc() == sp.first) {
				if top.last.less(sp.last) {
					top.last = sp.last
				}
				continue
			}
		}
		s.spans = append(s.spans, sp)
	}
	return s
}

// highestOverlapping returns the last address of the highest span that
// intersects [first, last].
func (s *spanSet) highestOverlapping(first, last u128) (u128, bool) {
	i := sort.Search(len(s.spans), func(k int) bool { return last.less(s.spans[k].first) })
	if i > 0 && !s.spans[i-1].last.less(first) {
		return s.spans[i-1].last, true
	}
	return u128{}, false
}
