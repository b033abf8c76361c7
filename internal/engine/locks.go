package engine

import "sync"

// keyedLocks serialises work on one resource (a service, a container, a
// peer) while letting work on different resources run in parallel. Entries
// are reference counted so the map does not grow with every PID ever seen.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	mu   sync.Mutex
	refs int
}

// lock acquires the locks of keys in a fixed (sorted, deduplicated) order so
// two requests needing overlapping sets never deadlock, and returns the
// function that releases them.
func (k *keyedLocks) lock(keys ...string) func() {
	keys = sortedUnique(keys)
	held := make([]*keyedLock, 0, len(keys))
	for _, key := range keys {
		k.mu.Lock()
		if k.m == nil {
			k.m = map[string]*keyedLock{}
		}
		l := k.m[key]
		if l == nil {
			l = &keyedLock{}
			k.m[key] = l
		}
		l.refs++
		k.mu.Unlock()
		l.mu.Lock()
		held = append(held, l)
	}
	return func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].mu.Unlock()
			k.mu.Lock()
			held[i].refs--
			if held[i].refs == 0 {
				delete(k.m, keys[i])
			}
			k.mu.Unlock()
		}
	}
}

func sortedUnique(keys []string) []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		dup := false
		for _, o := range out {
			if o == k {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, k)
		}
	}
	// Insertion sort: key lists have one to four entries.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
