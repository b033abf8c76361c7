package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/zlayer/zlayer-overlayd/internal/wg"
)

// Why fewer Ps than CPUs where wireguard-go runs (a data plane process, or
// the daemon with --dataplane daemon): every
// packet batch passes through a chain of goroutines (TUN reader, encryption
// or decryption worker, the peer's sequential sender or receiver, the UDP
// or TUN writer). With a P per CPU, each hand-off to a parked goroutine
// wakes another OS thread, and idle Ps spin looking for work, on CPUs the
// kernel needs for the TUN, UDP and TCP work of the same packets and the
// node needs for its workloads. With half the Ps most hand-offs stay on the
// running thread. System calls still run in parallel: a thread blocked in
// one gives its P away. On our 2-CPU benchmark machine this cut the
// daemon's CPU time per byte under iperf3 by 18 to 28 % when the machine
// had CPU to spare and by 6 to 10 % when other work saturated it
// (docs/benchmarks.md).

// maxProcsFor is the GOMAXPROCS the daemon runs with. flag is --max-procs
// (0: choose), envSet says GOMAXPROCS is set in the environment (the Go
// runtime already applied it, and an operator's explicit setting wins),
// userspace says packets go through the embedded wireguard-go, and current
// is the runtime's current value (the CPUs available to the process,
// cgroup limits included). set is false when the current value stays.
func maxProcsFor(flag int, envSet, userspace bool, current int) (n int, set bool) {
	switch {
	case envSet:
		return current, false
	case flag > 0:
		return flag, flag != current
	case !userspace:
		// The kernel carries the packets; the daemon only runs the
		// control plane and DNS, which are not tuned here.
		return current, false
	}
	n = max(1, current/2)
	return n, n != current
}

// applyMaxProcs sets GOMAXPROCS once the WireGuard backend is known. With
// the data plane in processes of its own (detached), the daemon runs only
// the control plane and DNS, which are not tuned here, and --max-procs
// applies to the data planes (dataplaneMaxProcs).
func applyMaxProcs(flag int, backend wg.Backend, detached bool, log *slog.Logger) {
	_, envSet := os.LookupEnv("GOMAXPROCS")
	userspace := backend != nil && backend.Kind() == wg.KindUserspace && !detached
	if detached {
		flag = 0
	}
	n, set := maxProcsFor(flag, envSet, userspace, runtime.GOMAXPROCS(0))
	if set {
		runtime.GOMAXPROCS(n)
	}
	log.Debug("scheduler", "gomaxprocs", n, "cpus", runtime.NumCPU(), "source", maxProcsSource(flag, envSet, set))
}

// dataplaneMaxProcs is the GOMAXPROCS a data plane process is started
// with: --max-procs, else half the CPUs available; 0 (the Go runtime's
// choice) when GOMAXPROCS is in the environment, which the data plane
// inherits and which wins there too.
func dataplaneMaxProcs(flag int) int {
	_, envSet := os.LookupEnv("GOMAXPROCS")
	if envSet {
		return 0
	}
	n, _ := maxProcsFor(flag, false, true, runtime.GOMAXPROCS(0))
	return n
}

func maxProcsSource(flag int, envSet, set bool) string {
	switch {
	case envSet:
		return "GOMAXPROCS environment variable"
	case flag > 0:
		return fmt.Sprintf("--max-procs %d", flag)
	case set:
		return "half the CPUs, for the userspace WireGuard data path"
	}
	return "Go runtime default"
}
