package main

import (
	"fmt"
	"io"
	"path/filepath"
	"time"

	"golang.org/x/sys/windows/svc"
)

// serviceName is the SCM service the ZLayer main daemon starts
// (sc.exe start ZLayerDaemon-Overlayd).
const serviceName = "ZLayerDaemon-Overlayd"

func init() { runService = runWindowsService }

// runWindowsService runs the daemon under the Service Control Manager.
// The SCM keeps no output, so the log goes to
// <data-dir>\logs\zlayer-overlayd.log (16 MiB, one older generation).
func runWindowsService(o options, stderr io.Writer) int {
	inService, err := svc.IsWindowsService()
	if err != nil {
		fmt.Fprintln(stderr, "zlayer-overlayd: cannot tell whether this is a service:", err)
		return 1
	}
	if !inService {
		fmt.Fprintf(stderr, "zlayer-overlayd: --service is for the Service Control Manager (sc.exe start %s); in a console, run without it\n", serviceName)
		return 2
	}
	lf, err := openRotating(filepath.Join(o.dataDir, "logs", "zlayer-overlayd.log"), 16<<20)
	if err != nil {
		return 1
	}
	defer lf.Close()
	log, err := newLogger(o.logLevel, o.logFormat, lf)
	if err != nil {
		fmt.Fprintln(lf, "zlayer-overlayd:", err)
		return 2
	}
	h := &scmHandler{run: func(stop <-chan string, ready func()) error {
		so := o
		so.stop, so.ready = stop, ready
		err := serve(so, log)
		if err != nil {
			log.Error("zlayer-overlayd stopped", "err", err)
		}
		return err
	}}
	if err := svc.Run(serviceName, h); err != nil {
		log.Error("the Service Control Manager did not run the service", "service", serviceName, "err", err)
		return 1
	}
	return int(h.exitCode)
}

// scmHandler translates between the SCM and superviseService.
type scmHandler struct {
	run      func(stop <-chan string, ready func()) error
	exitCode uint32
}

func (h *scmHandler) Execute(_ []string, r <-chan svc.ChangeRequest, s chan<- svc.Status) (bool, uint32) {
	cmds := make(chan svcCmd)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case c := <-r:
				var cmd svcCmd
				switch c.Cmd {
				case svc.Interrogate:
					cmd = svcInterrogate
				case svc.Stop:
					cmd = svcStop
				case svc.Shutdown:
					cmd = svcShutdown
				default:
					continue // not accepted, never sent
				}
				select {
				case cmds <- cmd:
				case <-done:
					return
				}
			case <-done:
				return
			}
		}
	}()
	ticker := time.NewTicker(2 * time.Second)
	defer ticker.Stop()
	report := func(rep svcReport) {
		st := svc.Status{CheckPoint: rep.CheckPoint, WaitHint: uint32(rep.WaitHint / time.Millisecond), Win32ExitCode: rep.ExitCode}
		switch rep.State {
		case svcStartPending:
			st.State = svc.StartPending
		case svcRunning:
			st.State = svc.Running
		case svcStopPending:
			st.State = svc.StopPending
		case svcStopped:
			st.State = svc.Stopped
		}
		if rep.AcceptStop {
			st.Accepts = svc.AcceptStop | svc.AcceptShutdown
		}
		s <- st
	}
	h.exitCode = superviseService(cmds, report, ticker.C, h.run)
	return false, h.exitCode
}
