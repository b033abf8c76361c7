//go:build linux

package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// bootMargin is the time a guest gets beyond its suites' timeouts: boot,
// unpacking the initramfs, and power-off, all emulated.
const bootMargin = 5 * time.Minute

// Boot runs suites (some of those the lab was built for) in a guest
// booting k and returns what the guest reported. An error means the run
// itself broke (no boot, no end, a kernel oops); a suite's failure is in
// its SuiteResult.
func (l *Lab) Boot(ctx context.Context, k *Kernel, suites []Suite) (Report, error) {
	for _, s := range suites {
		if !l.built[s.Package] {
			return Report{}, fmt.Errorf("suite %s: the lab has no test binary of %s", s.Name, s.Package)
		}
	}
	dir := filepath.Join(l.cfg.WorkDir, "boot-"+k.Release)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Report{}, err
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := l.initrd(ctx, k, suites, initrd); err != nil {
		return Report{}, err
	}
	console, report := filepath.Join(dir, "console.log"), filepath.Join(dir, "report.log")
	limit := bootMargin
	for _, s := range suites {
		limit += s.limit()
	}
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	// A kernel oops leaves the guest running with the suite's process
	// dead or stuck; stop it then instead of at the timeout.
	crashCtx, crashed := context.WithCancelCause(ctx)
	defer crashed(nil)
	cmd := exec.CommandContext(crashCtx, "qemu-system-x86_64", l.qemuArgs(k, initrd, console, report)...)
	// A caller killed outright (go test's SIGKILL, the OOM killer) runs no
	// cleanup; the guest must not go on running without it. The signal
	// follows the thread that started QEMU, and Go ends a thread only when
	// a goroutine locked to it exits, which nothing here does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var qemuOut strings.Builder
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Report{}, err
	}
	stopReport := follow(report, func(line string) {
		if strings.HasPrefix(line, markerPrefix) {
			l.cfg.Logf("vm: [%v] %s", time.Since(start).Round(time.Second), strings.TrimPrefix(line, markerPrefix))
		}
	})
	stopConsole := follow(console, func(line string) {
		if isFatal(line) {
			// Let the trace that follows reach the file first.
			time.AfterFunc(3*time.Second, func() { crashed(errors.New(strings.TrimSpace(line))) })
		}
	})
	err := cmd.Wait()
	stopReport()
	stopConsole()
	raw, _ := os.ReadFile(report)
	rep, perr := parseReport(string(raw))
	cons, _ := os.ReadFile(console)
	rep.Console = string(cons)
	switch {
	case context.Cause(crashCtx) != nil && ctx.Err() == nil:
		return rep, fmt.Errorf("the guest kernel crashed (%v); console:\n%s", context.Cause(crashCtx), tail(string(cons), 80))
	case caller.Err() != nil:
		return rep, fmt.Errorf("stopped the guest before it finished: %v; console:\n%s", context.Cause(caller), tail(string(cons), 60))
	case ctx.Err() != nil:
		return rep, fmt.Errorf("the guest did not finish within %v; console:\n%s", limit, tail(string(cons), 60))
	case err != nil:
		return rep, fmt.Errorf("qemu: %v\n%s\nconsole:\n%s", err, qemuOut.String(), tail(string(cons), 60))
	case perr != nil:
		return rep, perr
	case rep.Booted == "":
		return rep, fmt.Errorf("the guest's init never reported; console:\n%s", tail(string(cons), 60))
	case !rep.Done:
		return rep, fmt.Errorf("the guest stopped before running every suite; console:\n%s", tail(string(cons), 60))
	}
	if bad := kernelProblems(string(cons)); bad != "" {
		return rep, fmt.Errorf("the guest kernel reported a problem:\n%s", bad)
	}
	return rep, nil
}

// initrd is the base archive followed by the kernel's: the kernel unpacks
// concatenated cpio archives one over the other.
func (l *Lab) initrd(ctx context.Context, k *Kernel, suites []Suite, out string) error {
	kc := out + ".kernel"
	if err := l.kernelCPIO(ctx, k, suites, kc); err != nil {
		return err
	}
	defer os.Remove(kc)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, part := range []string{l.base, kc} {
		in, err := os.Open(part)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, in)
		in.Close()
		if err != nil {
			return err
		}
	}
	return f.Close()
}

func (l *Lab) qemuArgs(k *Kernel, initrd, console, report string) []string {
	cpu := k.CPU
	if c := os.Getenv(EnvCPU); c != "" {
		cpu = c
	}
	accel := []string{"-accel", l.cfg.Accel, "-cpu", cpu}
	if l.cfg.Accel == "kvm" {
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	}
	return append(accel,
		"-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
		"-smp", strconv.Itoa(l.cfg.CPUs), "-m", strconv.Itoa(l.cfg.MemoryMiB),
		"-kernel", k.Vmlinuz(), "-initrd", initrd,
		// panic=-1: a panic reboots at once, and -no-reboot turns that
		// into QEMU exiting rather than hanging until the timeout.
		// loglevel=5: warnings and worse reach the console, where
		// kernelProblems looks for them.
		"-append", "console=ttyS0 panic=-1 loglevel=5",
		"-serial", "file:"+console,
		"-serial", "file:"+report,
	)
}

// follow calls onLine with each line appended to the file at path (which
// may not exist yet) until the returned func is called; that func reads
// what is left before it returns.
func follow(path string, onLine func(string)) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := &tailer{path: path, onLine: onLine}
		defer t.close()
		for {
			select {
			case <-done:
				t.read()
				return
			case <-time.After(time.Second):
				t.read()
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// tailer reads whole lines appended to a file.
type tailer struct {
	path    string
	onLine  func(string)
	f       *os.File
	r       *bufio.Reader
	partial string
}

func (t *tailer) read() {
	if t.f == nil {
		f, err := os.Open(t.path)
		if err != nil {
			return
		}
		t.f, t.r = f, bufio.NewReader(f)
	}
	for {
		chunk, err := t.r.ReadString('\n')
		t.partial += chunk
		if err != nil {
			return
		}
		t.onLine(strings.TrimRight(t.partial, "\r\n"))
		t.partial = ""
	}
}

func (t *tailer) close() {
	if t.f != nil {
		t.f.Close()
	}
}

// isFatal tells a console line that means the kernel is broken from here
// on: an oops or a panic.
func isFatal(line string) bool {
	for _, sign := range []string{"BUG:", "Oops", "Kernel panic", "general protection fault"} {
		if strings.Contains(line, sign) {
			return true
		}
	}
	return false
}

// kernelProblems returns the console lines that say the kernel itself
// went wrong: a test passing over a kernel warning has not passed.
func kernelProblems(console string) string {
	var bad []string
	for _, line := range strings.Split(console, "\n") {
		for _, sign := range []string{"BUG:", "WARNING:", "Oops", "Kernel panic", "general protection fault", "Call Trace:"} {
			if strings.Contains(line, sign) {
				bad = append(bad, strings.TrimSpace(line))
				break
			}
		}
	}
	return strings.Join(bad, "\n")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
