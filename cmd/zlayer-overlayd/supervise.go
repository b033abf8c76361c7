package main

import (
	"sync"
	"time"
)

// The life cycle of the daemon under a service manager, kept apart from
// the Windows SCM's types so that it is tested on every platform;
// service_windows.go translates.

type svcState int

const (
	svcStartPending svcState = iota
	svcRunning
	svcStopPending
	svcStopped
)

func (s svcState) String() string {
	return [...]string{"start-pending", "running", "stop-pending", "stopped"}[s]
}

type svcCmd int

const (
	svcInterrogate svcCmd = iota
	svcStop
	svcShutdown
)

// svcReport is one status report to the service manager.
type svcReport struct {
	State      svcState
	AcceptStop bool   // stop and shutdown requests are accepted
	CheckPoint uint32 // progress of a pending state
	WaitHint   time.Duration
	ExitCode   uint32 // Win32 exit code once stopped: 0 clean, 1 failed
}

// Pending states promise progress within these hints; a tick re-reports
// with the next checkpoint so a long state restore is not taken for a hung
// start.
const (
	startHint = 30 * time.Second
	stopHint  = 20 * time.Second
)

// superviseService runs the daemon (run, which must call ready once it
// serves requests and return after a value arrives on stop) and keeps the
// service manager informed: start-pending until ready, running, then
// stop-pending after a stop or shutdown request, and stopped with exit
// code 0 or 1 when run returns. It returns that exit code.
func superviseService(cmds <-chan svcCmd, report func(svcReport), tick <-chan time.Time, run func(stop <-chan string, ready func()) error) uint32 {
	stop := make(chan string, 1)
	readyCh := make(chan struct{})
	done := make(chan error, 1)
	var readyOnce sync.Once
	go func() {
		done <- run(stop, func() { readyOnce.Do(func() { close(readyCh) }) })
	}()

	cur := svcReport{State: svcStartPending, CheckPoint: 1, WaitHint: startHint}
	report(cur)
	for {
		select {
		case <-readyCh:
			readyCh = nil
			if cur.State == svcStartPending {
				cur = svcReport{State: svcRunning, AcceptStop: true}
				report(cur)
			}
		case err := <-done:
			cur = svcReport{State: svcStopped}
			if err != nil {
				cur.ExitCode = 1
			}
			report(cur)
			return cur.ExitCode
		case c := <-cmds:
			switch c {
			case svcInterrogate:
				report(cur)
			case svcStop, svcShutdown:
				if cur.State == svcStopPending {
					report(cur)
					continue
				}
				cause := "service stop request"
				if c == svcShutdown {
					cause = "system shutdown"
				}
				stop <- cause
				cur = svcReport{State: svcStopPending, CheckPoint: 1, WaitHint: stopHint}
				report(cur)
			}
		case <-tick:
			if cur.State == svcStartPending || cur.State == svcStopPending {
				cur.CheckPoint++
				report(cur)
			}
		}
	}
}
