package wg

import (
	"runtime/metrics"
	"testing"
)

// fakeTrim is a heapTrim whose heap is a number the test sets.
func fakeTrim(reclaimable *uint64, released *int) *heapTrim {
	return &heapTrim{
		min:         100,
		reclaimable: func() uint64 { return *reclaimable },
		release:     func() { *released++; *reclaimable = 0 },
	}
}

func TestHeapTrimReleasesOnceABurstIsOver(t *testing.T) {
	var heap uint64
	var released int
	tr := fakeTrim(&heap, &released)
	// A burst of requests over three ticks: nothing is released while
	// requests keep coming, however much garbage they leave.
	for i, requests := range []uint64{40, 90, 400} {
		heap += 200
		if tr.tick(requests, 0) {
			t.Fatalf("tick %d released memory while requests were still arriving", i)
		}
	}
	if !tr.tick(400, 0) {
		t.Fatal("the first quiet tick after the burst did not release the reclaimable heap")
	}
	if released != 1 {
		t.Fatalf("released %d times, want 1", released)
	}
	// Quiet ticks after that release nothing more, even if the runtime
	// reports reclaimable memory again: nothing has allocated.
	heap = 500
	for i := range 3 {
		if tr.tick(400, 0) {
			t.Fatalf("quiet tick %d after the release released again", i)
		}
	}
}

func TestHeapTrimWaitsForARequestStillBeingServed(t *testing.T) {
	var heap uint64
	var released int
	tr := fakeTrim(&heap, &released)
	tr.tick(7, 0)
	// One long request (a read of thousands of peers on a slow node) spans
	// several ticks: the count does not move, but it is not over.
	heap = 300
	for i, serving := range []int{1, 1, 1} {
		if tr.tick(8, serving) {
			t.Fatalf("tick %d released memory while a request was still being served", i)
		}
		heap += 200
	}
	// Its garbage is released once it ends, not lost to an early release.
	if !tr.tick(8, 0) || released != 1 {
		t.Fatalf("released %d times after the long request ended, want 1", released)
	}
}

func TestHeapTrimSkipsASmallHeap(t *testing.T) {
	var heap uint64
	var released int
	tr := fakeTrim(&heap, &released)
	tr.tick(5, 0)
	heap = 99 // below min: not worth a collection
	if tr.tick(5, 0) {
		t.Fatal("released 99 bytes, below the minimum of 100")
	}
	// The burst stays pending: when a later request's garbage pushes the
	// heap over the minimum, the next quiet tick releases it.
	tr.tick(6, 0)
	heap = 150
	if !tr.tick(6, 0) || released != 1 {
		t.Fatalf("released %d times after the heap passed the minimum, want 1", released)
	}
}

func TestReclaimableHeapMetricsExist(t *testing.T) {
	// reclaimableHeap reads 0, and the data plane never trims, on a
	// runtime without these metrics: a Go upgrade that drops one must
	// fail here rather than quietly keep the memory.
	kinds := map[string]metrics.ValueKind{}
	for _, d := range metrics.All() {
		kinds[d.Name] = d.Kind
	}
	for _, name := range []string{"/memory/classes/heap/objects:bytes", "/gc/heap/live:bytes", "/memory/classes/heap/free:bytes"} {
		if kinds[name] != metrics.KindUint64 {
			t.Errorf("runtime metric %s is missing or not a uint64", name)
		}
	}
}
