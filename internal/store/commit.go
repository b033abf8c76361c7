package store

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Why not bbolt's DB.Batch: it waits up to MaxBatchDelay (10ms) for company before it
// commits, which a lone attach would pay in full, and it re-runs a caller's fn when another
// fn in the batch fails, so every fn would have to be idempotent. Update instead commits as
// soon as no other commit is in flight (a lone caller waits for nothing), and callers that
// arrive while an fsync is running share the next one. Each fn runs exactly once; a failing
// fn's writes are undone inside the shared transaction (Tx.revert), so it cannot affect the
// others.

type pendingUpdate struct {
	fn       func(*Tx) error
	err      error
	panicVal any
	panicked bool
	done     chan struct{}
}

// Update runs fn in a read-write transaction and commits it. When Update returns nil the
// change is on disk (fsync-ed, unless Options.NoSync). When fn returns an error or panics,
// nothing fn wrote is kept, and the error (or panic) is passed to the caller.
//
// Concurrent Updates are serialised in arrival order and may share one bbolt commit; fn sees
// the writes of every Update ordered before it. fn must not block or do I/O: the commit, and every
// Update queued behind it, waits for fn; and fn must not call Update or View on the same Store,
// which would wait for fn to finish. If the shared commit itself fails, every Update in
// it returns that error and none of them is kept.
func (s *Store) Update(fn func(tx *Tx) error) error {
	p := &pendingUpdate{fn: fn, done: make(chan struct{})}
	s.queueMu.Lock()
	s.queue = append(s.queue, p)
	s.queueMu.Unlock()

	s.commitQueued(p)

	if p.panicked {
		panic(p.panicVal)
	}
	return p.err
}

// commitQueued returns once p is committed, by this goroutine or by the one committing when
// p was queued.
func (s *Store) commitQueued(p *pendingUpdate) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	select {
	case <-p.done:
		// An earlier committer took p along while we waited for commitMu.
	default:
		// No committer is running and p was queued before we took commitMu, so p is in
		// the queue: commit it and everything queued with it.
		s.queueMu.Lock()
		batch := s.queue
		s.queue = nil
		s.queueMu.Unlock()
		s.commit(batch)
	}
}

func (s *Store) commit(batch []*pendingUpdate) {
	err := s.db.Update(func(btx *bolt.Tx) error {
		for _, p := range batch {
			tx := &Tx{btx: btx, writable: true}
			p.run(tx)
			if p.err != nil || p.panicked {
				if err := tx.revert(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			err = fmt.Errorf("store: %s is closed: %w", s.path, err)
		} else {
			err = fmt.Errorf("store: committing to %s: %w", s.path, err)
		}
	}
	for _, p := range batch {
		if err != nil && p.err == nil && !p.panicked {
			p.err = err
		}
		close(p.done)
	}
}

func (p *pendingUpdate) run(tx *Tx) {
	defer func() {
		if r := recover(); r != nil {
			p.panicked, p.panicVal = true, r
		}
	}()
	p.err = p.fn(tx)
}
