package main

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// recorder collects reports; wait blocks until one in state s arrives.
type recorder struct {
	mu      sync.Mutex
	reports []svcReport
	notify  chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 100)} }

func (r *recorder) report(s svcReport) {
	r.mu.Lock()
	r.reports = append(r.reports, s)
	r.mu.Unlock()
	r.notify <- struct{}{}
}

func (r *recorder) wait(t *testing.T, s svcState) svcReport {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, rep := range r.reports {
			if rep.State == s {
				r.mu.Unlock()
				return rep
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-timeout:
			t.Fatalf("no %s report; got %+v", s, r.reports)
		}
	}
}

func (r *recorder) states() []svcState {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []svcState
	for _, rep := range r.reports {
		if len(out) == 0 || out[len(out)-1] != rep.State {
			out = append(out, rep.State)
		}
	}
	return out
}

func equalStates(a, b []svcState) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// fakeDaemon serves until stopped, like serve: it calls ready when
// "listening" and returns once a stop arrives.
func fakeDaemon(started <-chan struct{}, gotCause *string) func(<-chan string, func()) error {
	return func(stop <-chan string, ready func()) error {
		<-started // the test decides when the restore is over
		ready()
		*gotCause = <-stop
		return nil
	}
}

func TestServiceStopIsAGracefulStop(t *testing.T) {
	cmds, tick, rec := make(chan svcCmd), make(chan time.Time), newRecorder()
	start := make(chan struct{})
	var cause string
	exit := make(chan uint32)
	go func() { exit <- superviseService(cmds, rec.report, tick, fakeDaemon(start, &cause)) }()

	first := rec.wait(t, svcStartPending)
	if first.AcceptStop || first.WaitHint == 0 {
		t.Errorf("start-pending report %+v: must not accept stop and must give a wait hint", first)
	}
	tick <- time.Time{} // a slow restore keeps reporting progress
	tick <- time.Time{}
	close(start)
	if r := rec.wait(t, svcRunning); !r.AcceptStop {
		t.Errorf("running without accepting stop: %+v", r)
	}
	cmds <- svcInterrogate
	cmds <- svcStop
	if code := <-exit; code != 0 {
		t.Errorf("exit code %d after a clean stop", code)
	}
	if cause != "service stop request" {
		t.Errorf("daemon got stop cause %q", cause)
	}
	want := []svcState{svcStartPending, svcRunning, svcStopPending, svcStopped}
	if got := rec.states(); !equalStates(got, want) {
		t.Errorf("states %v, want %v", got, want)
	}
	rec.mu.Lock()
	var checkpoints []uint32
	for _, r := range rec.reports {
		if r.State == svcStartPending {
			checkpoints = append(checkpoints, r.CheckPoint)
		}
	}
	rec.mu.Unlock()
	if len(checkpoints) != 3 || checkpoints[0] >= checkpoints[1] || checkpoints[1] >= checkpoints[2] {
		t.Errorf("start-pending checkpoints %v must increase with each tick", checkpoints)
	}
}

func TestServiceShutdownStopsOnceAndReportsIt(t *testing.T) {
	cmds, tick, rec := make(chan svcCmd), make(chan time.Time), newRecorder()
	start := make(chan struct{})
	close(start)
	var cause string
	exit := make(chan uint32)
	go func() { exit <- superviseService(cmds, rec.report, tick, fakeDaemon(start, &cause)) }()
	rec.wait(t, svcRunning)
	cmds <- svcShutdown
	if code := <-exit; code != 0 || cause != "system shutdown" {
		t.Errorf("exit %d cause %q", code, cause)
	}
}

func TestServiceFailureIsExitCodeOne(t *testing.T) {
	cmds, tick, rec := make(chan svcCmd), make(chan time.Time), newRecorder()
	code := superviseService(cmds, rec.report, tick, func(<-chan string, func()) error {
		return errors.New("restore state: store is corrupt")
	})
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	last := rec.wait(t, svcStopped)
	if last.ExitCode != 1 {
		t.Errorf("stopped report %+v", last)
	}
	if got, want := rec.states(), []svcState{svcStartPending, svcStopped}; !equalStates(got, want) {
		t.Errorf("states %v, want %v", got, want)
	}
}

func TestServiceRepeatedStopSendsOneStop(t *testing.T) {
	cmds, tick, rec := make(chan svcCmd), make(chan time.Time), newRecorder()
	stops := make(chan string, 4)
	release := make(chan struct{})
	exit := make(chan uint32)
	go func() {
		exit <- superviseService(cmds, rec.report, tick, func(stop <-chan string, ready func()) error {
			ready()
			stops <- <-stop
			<-release // a slow graceful stop
			select {
			case s := <-stop:
				stops <- s
			default:
			}
			return nil
		})
	}()
	rec.wait(t, svcRunning)
	cmds <- svcStop
	rec.wait(t, svcStopPending)
	cmds <- svcStop
	cmds <- svcShutdown
	tick <- time.Time{}
	close(release)
	<-exit
	close(stops)
	var n int
	for range stops {
		n++
	}
	if n != 1 {
		t.Errorf("the daemon was asked to stop %d times", n)
	}
}
