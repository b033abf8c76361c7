package engine

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
)

// A pass that takes longer than the interval is followed by a pause at
// least as long as it took, not by the next pass at once. Passes here take
// five intervals (the hook sleeps in each), so from one pass's hook to the
// next's there are at least the sleep and a pause as long as a pass: two
// sleeps. Back to back they are one sleep and a little apart. The bounds
// are lower bounds, which timers and sleeps keep on any machine.
func TestSlowPassesDoNotRunBackToBack(t *testing.T) {
	const interval, passTakes, passes = 10 * time.Millisecond, 50 * time.Millisecond, 5
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, store.FileName), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	net := enginetest.NewNet()
	e, err := New(Config{
		Store:             st,
		NodeConfigPath:    filepath.Join(dir, NodeConfigFile),
		Net:               net,
		WG:                enginetest.NewWG(net, wg.KindKernel),
		Procs:             enginetest.NewProcs(),
		Log:               slog.New(slog.DiscardHandler),
		ReconcileInterval: interval,
		HealthInterval:    -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Built by hand rather than with newHarness, which starts the engine
	// before a test can set the hook: set after Start, the loop would read
	// it while it is written.
	var mu sync.Mutex
	var at []time.Time // when each pass reached its list of links
	done := make(chan struct{})
	e.testHook = func(point string) {
		if point != "reconcile.links" {
			return
		}
		mu.Lock()
		at = append(at, time.Now())
		if len(at) == passes+1 { // the start-up pass and then the loop's
			close(done)
		}
		mu.Unlock()
		time.Sleep(passTakes)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-done
	e.Close()
	mu.Lock()
	defer mu.Unlock()
	for i := 2; i <= passes; i++ {
		if gap := at[i].Sub(at[i-1]); gap < 2*passTakes {
			t.Errorf("pass %d began %v after pass %d, whose own work took %v: no pause after a pass that outlasted the %v interval", i, gap, i-1, passTakes, interval)
		}
	}
}
