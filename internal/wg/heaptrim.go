package wg

import (
	"runtime/debug"
	"runtime/metrics"
)

// heapTrimMin is the least reclaimable heap worth a forced collection: about
// a minute of a 5,000-peer device's reads every health interval.
const heapTrimMin = 16 << 20

// heapTrim gives the data plane's free heap back to the kernel once a burst
// of UAPI requests is over. The Go runtime keeps what the process has used,
// up to its next collection goal of twice the live heap: with thousands of
// peers, adding them, or reading them all every health interval, leaves
// tens of MiB resident that no packet needs. A burst ends when a tick sees
// no request since the one before and none still being served: a read of
// thousands of peers can take longer than a tick on a slow node, and
// trimming under it would leave its garbage for no later tick to see. The
// runtime's collection goal is left alone (a lower GOGC would collect more
// often while packets flow too): the only extra collections are these, at
// most one per burst.
type heapTrim struct {
	min         uint64
	reclaimable func() uint64 // heap bytes a collection would return
	release     func()        // collect and return them

	seen  uint64 // requests counted at the last tick
	dirty bool   // requests since the last release
}

func newHeapTrim() *heapTrim {
	return &heapTrim{min: heapTrimMin, reclaimable: reclaimableHeap, release: debug.FreeOSMemory}
}

// tick is called every few seconds with the device's request count and
// how many of them are still being served. It reports whether it released
// memory.
func (t *heapTrim) tick(requests uint64, serving int) bool {
	busy := requests != t.seen || serving > 0
	t.seen = requests
	if busy {
		t.dirty = true
		return false
	}
	if !t.dirty || t.reclaimable() < t.min {
		return false
	}
	t.dirty = false
	t.release()
	return true
}

// reclaimableHeap is the heap held beyond the live objects: garbage not yet
// collected plus free spans not yet returned to the kernel. It is an upper
// bound: the live heap is as of the last collection, so what was allocated
// since and is still live (peers just added) counts too, and a trim may
// return less than heapTrimMin. That costs one collection, once per burst.
func reclaimableHeap() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	metrics.Read(s)
	for _, v := range s {
		if v.Value.Kind() != metrics.KindUint64 {
			return 0 // a runtime without these metrics: never trim
		}
	}
	objects, live, free := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
	if objects < live {
		return free
	}
	return objects - live + free
}
