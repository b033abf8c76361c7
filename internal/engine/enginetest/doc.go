// Package enginetest holds in-memory doubles of the engine's dependencies
// (the host network, the WireGuard backend and the process table) for the
// tests of this module: the engine's own tests and the in-process load
// suite of internal/chaos. They keep just enough state for the engine's
// reads to see its own writes, let a test look at and tamper with that
// state the way the kernel or a container's death would, and inject
// failures. Every method is safe for concurrent use, so the engine's
// background loops can run beside requests under the race detector.
//
// The package does not import internal/engine, so the engine's internal
// tests can use it; it satisfies engine.Network, wg.Backend and
// engine.Processes structurally.
package enginetest
