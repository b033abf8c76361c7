package engine

import (
	"context"
	"errors"
	"testing"
)

// A context bounds the wait for a lock, not the taking of a free one. A
// reconcile pass whose budget an earlier step used up must still repair
// what it can lock; before, lock chose at random between the free lock and
// the ended context, and refused half the time.
func TestFreeLocksAreTakenAfterTheContextEnded(t *testing.T) {
	var k keyedLocks
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 200 {
		unlock, err := k.lock(ctx, serviceLock("web"), handleLock("linux_pid:1"))
		if err != nil {
			t.Fatalf("attempt %d: free locks refused with an ended context: %v", i, err)
		}
		unlock()
	}
}

// A held lock still times out with the context, says what is busy and
// leaves nothing taken behind.
func TestHeldLockStillFailsWhenTheContextEnds(t *testing.T) {
	var k keyedLocks
	unlockWeb, err := k.lock(context.Background(), serviceLock("web"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// handle: ranks after service:, so the free one is never taken first.
	_, err = k.lock(ctx, handleLock("linux_pid:1"), serviceLock("web"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("lock on a held service with an ended context: %v, want context.Canceled", err)
	}
	unlockWeb()
	// Nothing stays held: both can be taken at once now.
	unlock, err := k.lock(ctx, handleLock("linux_pid:1"), serviceLock("web"))
	if err != nil {
		t.Fatalf("after the failed attempt: %v", err)
	}
	unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) != 0 {
		t.Fatalf("lock entries left behind: %v", k.m)
	}
}
