//go:build linux

package vm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// bootMargin is the time a guest gets beyond its suites' timeouts: boot,
// unpacking the initramfs, and power-off, all emulated.
const bootMargin = 5 * time.Minute

// Boot runs the lab's suites in a guest booting k and returns what the
// guest reported. An error means the run itself broke (no boot, no end,
// a kernel oops); a suite's failure is in its SuiteResult.
func (l *Lab) Boot(ctx context.Context, k *Kernel) (Report, error) {
	dir := filepath.Join(l.cfg.WorkDir, "boot-"+k.Release)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Report{}, err
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := l.initrd(ctx, k, initrd); err != nil {
		return Report{}, err
	}
	console, report := filepath.Join(dir, "console.log"), filepath.Join(dir, "report.log")
	limit := bootMargin
	for _, s := range l.suites {
		limit += s.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", l.qemuArgs(k, initrd, console, report)...)
	var qemuOut strings.Builder
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Report{}, err
	}
	stopTail := l.follow(report, start)
	err := cmd.Wait()
	stopTail()
	raw, _ := os.ReadFile(report)
	rep, perr := parseReport(string(raw))
	cons, _ := os.ReadFile(console)
	switch {
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
func (l *Lab) initrd(ctx context.Context, k *Kernel, out string) error {
	kc := out + ".kernel"
	if err := l.kernelCPIO(ctx, k, l.suites, kc); err != nil {
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
	accel := []string{"-accel", "tcg", "-cpu", "max"}
	if l.cfg.Accel == "kvm" {
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	}
	return append(accel,
		"-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
		"-smp", strconv.Itoa(l.cfg.CPUs), "-m", strconv.Itoa(l.cfg.MemoryMiB),
		"-kernel", k.Vmlinuz(), "-initrd", initrd,
		// panic=-1: a panic reboots at once, and -no-reboot turns that
		// into QEMU exiting rather than hanging until the timeout.
		"-append", "console=ttyS0 panic=-1 quiet",
		"-serial", "file:"+console,
		"-serial", "file:"+report,
	)
}

// follow logs the markers the guest writes while it runs, so a long run
// shows its progress; the returned func stops it.
func (l *Lab) follow(path string, start time.Time) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var f *os.File
		var r *bufio.Reader
		var partial string
		for {
			select {
			case <-done:
				if f != nil {
					f.Close()
				}
				return
			case <-time.After(time.Second):
			}
			if f == nil {
				var err error
				if f, err = os.Open(path); err != nil {
					continue
				}
				r = bufio.NewReader(f)
			}
			for {
				chunk, err := r.ReadString('\n')
				partial += chunk
				if err != nil {
					break
				}
				line := strings.TrimRight(partial, "\r\n")
				partial = ""
				if strings.HasPrefix(line, markerPrefix) {
					l.cfg.Logf("vm: [%v] %s", time.Since(start).Round(time.Second), strings.TrimPrefix(line, markerPrefix))
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
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
