package main

import (
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/wg"
)

func TestMaxProcsFor(t *testing.T) {
	for _, c := range []struct {
		name           string
		flag           int
		env, userspace bool
		current, want  int
		wantSet        bool
	}{
		{"userspace halves", 0, false, true, 8, 4, true},
		{"userspace rounds down", 0, false, true, 3, 1, true},
		{"userspace keeps one", 0, false, true, 1, 1, false},
		{"kernel keeps all", 0, false, false, 8, 8, false},
		{"flag wins over the choice", 6, false, true, 8, 6, true},
		{"flag equal to current", 8, false, false, 8, 8, false},
		{"environment wins over the flag", 6, true, true, 8, 8, false},
		{"environment wins over the choice", 0, true, true, 8, 8, false},
	} {
		n, set := maxProcsFor(c.flag, c.env, c.userspace, c.current)
		if n != c.want || set != c.wantSet {
			t.Errorf("%s: maxProcsFor(%d, %v, %v, %d) = %d, %v; want %d, %v", c.name, c.flag, c.env, c.userspace, c.current, n, set, c.want, c.wantSet)
		}
	}
}

// The daemon's own runtime ends up with the chosen value.
func TestApplyMaxProcs(t *testing.T) {
	if _, ok := os.LookupEnv("GOMAXPROCS"); ok {
		t.Skip("GOMAXPROCS is set in the environment, which the daemon leaves alone by design")
	}
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	backend, err := wg.NewBackend("userspace", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Skipf("no userspace WireGuard backend on %s: %v", runtime.GOOS, err)
	}
	log := slog.New(slog.DiscardHandler)

	// The data plane in processes of their own: the daemon keeps every P.
	applyMaxProcs(0, backend, true, log)
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("detached data plane, %d Ps before: GOMAXPROCS = %d", before, got)
	}
	applyMaxProcs(3, backend, true, log)
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("detached data plane, --max-procs 3 (the data planes'), %d Ps before: the daemon's GOMAXPROCS = %d", before, got)
	}
	if got, want := dataplaneMaxProcs(0), max(1, before/2); got != want {
		t.Errorf("a data plane's GOMAXPROCS with %d Ps: %d, want %d", before, got, want)
	}
	if got := dataplaneMaxProcs(3); got != 3 {
		t.Errorf("a data plane's GOMAXPROCS with --max-procs 3: %d", got)
	}
	applyMaxProcs(0, backend, false, log)
	if got, want := runtime.GOMAXPROCS(0), max(1, before/2); got != want {
		t.Errorf("userspace backend, %d Ps before: GOMAXPROCS = %d, want %d", before, got, want)
	}
	applyMaxProcs(3, backend, false, log)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("--max-procs 3: GOMAXPROCS = %d", got)
	}
	t.Setenv("GOMAXPROCS", "3") // as the runtime applied it: GOMAXPROCS is 3 from above
	if got := dataplaneMaxProcs(1); got != 0 {
		t.Errorf("with GOMAXPROCS in the environment, a data plane is started with GOMAXPROCS %d, not left to it", got)
	}
	applyMaxProcs(1, backend, false, log)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("with GOMAXPROCS in the environment, --max-procs 1 changed GOMAXPROCS to %d", got)
	}
}

func TestMaxProcsFlag(t *testing.T) {
	if _, err := parseFlags([]string{"--max-procs", "-1"}, io.Discard); err == nil || !strings.Contains(err.Error(), "--max-procs") {
		t.Errorf("--max-procs -1: err = %v, want one naming the flag", err)
	}
	o, err := parseFlags([]string{"--max-procs", "2"}, io.Discard)
	if err != nil || o.maxProcs != 2 {
		t.Errorf("--max-procs 2: %d, %v", o.maxProcs, err)
	}
}
