package engine

import "time"

// ReconcileRuns is how many reconcile passes have run since the engine
// started (the metrics endpoint exports it).
func (e *Engine) ReconcileRuns() uint64 { return e.reconcileRuns.Load() }

// Observer receives measurements the metrics endpoint exports. Its methods
// are called from the passes themselves, so they must be quick and must
// not call back into the engine.
type Observer interface {
	// ReconcileDone reports one reconcile pass: how long it took and
	// whether it failed (err: the repairs that could not be made).
	ReconcileDone(took time.Duration, err error)
	// FirewallSyncFailed reports a failed rebuild or removal of our
	// nftables table.
	FirewallSyncFailed()
}

func (e *Engine) observeReconcile(took time.Duration, err error) {
	if e.cfg.Observer != nil {
		e.cfg.Observer.ReconcileDone(took, err)
	}
}

func (e *Engine) observeFirewallFailure() {
	if e.cfg.Observer != nil {
		e.cfg.Observer.FirewallSyncFailed()
	}
}
