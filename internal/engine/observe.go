package engine

// ReconcileRuns is how many reconcile passes have run since the engine
// started (the metrics endpoint exports it).
func (e *Engine) ReconcileRuns() uint64 { return e.reconcileRuns.Load() }
