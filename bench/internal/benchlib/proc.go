//go:build linux

package benchlib

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Proc is a background process that dies with the benchmark.
type Proc struct {
	Cmd    *exec.Cmd
	exited chan struct{}
}

// Start launches argv in the background with its output in logPath; it is
// killed at Cleanup and, through the parent-death signal, if the benchmark
// itself dies.
func Start(logPath string, argv ...string) *Proc {
	return start(logPath, &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}, argv)
}

// StartInSession is Start with argv in a session of its own, as the
// daemon runs its data planes. Under autogroup scheduling
// (kernel.sched_autogroup_enabled, on in most distribution kernels) every
// session outside a cgroup is a scheduling group of its own, and a busy
// CPU is shared between groups before it is shared within them: a data
// path alone in its session gets a larger share than one sharing the
// benchmark's session with iperf3. Contenders compared with our data
// planes must run the same way.
func StartInSession(logPath string, argv ...string) *Proc {
	return start(logPath, &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setsid: true}, argv)
}

func start(logPath string, attr *syscall.SysProcAttr, argv []string) *Proc {
	cmd := exec.Command(argv[0], argv[1:]...)
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			Fatal("%v", err)
		}
		cmd.Stdout, cmd.Stderr = f, f
		Defer(func() { f.Close() })
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		Fatal("start %s: %v", argv[0], err)
	}
	p := &Proc{Cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	Defer(p.Stop)
	return p
}

// Exited is closed when the process has ended.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Stop ends the process (and its process group: `ip netns exec` children)
// with SIGTERM, then SIGKILL after two seconds.
func (p *Proc) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(2 * time.Second):
		syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// WaitFor polls cond every 10 ms until it is true, the process exits or
// timeout passes.
func (p *Proc) WaitFor(what string, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s: the process exited first", what)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %v", what, timeout)
		}
	}
}
