//go:build linux

package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envOutlive makes TestGuestThatOutlivesItsTest the child of the tests
// below: it boots a guest whose suite never ends.
const envOutlive = "ZLAYER_VM_OUTLIVE"

// hangSuite never ends: the guest runs until the lab stops it.
var hangSuite = Suite{Name: "hang", Package: "internal/lab/vm", Run: "^TestGuestHelper$", Timeout: 10 * time.Minute,
	Env: []string{envGuestHelper + "=hang"}}

func TestGuestThatOutlivesItsTest(t *testing.T) {
	if os.Getenv(envOutlive) == "" {
		t.Skip("run by TestVMStopsTheGuestBeforeGoTestTimesOut and TestVMGuestDiesWithItsTest")
	}
	ctx := labContext(t)
	k, l := hangLab(t, ctx)
	if _, err := l.Boot(ctx, k, []Suite{hangSuite}); err != nil {
		t.Fatal(err)
	}
	t.Fatal("a suite that never ends ended")
}

// hangLab resolves the guest's kernel and builds a lab for hangSuite.
func hangLab(t *testing.T, ctx context.Context) (*Kernel, *Lab) {
	t.Helper()
	k, err := ResolveKernel(ctx, CacheDir(), Bookworm, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(ctx, Config{ModuleRoot: moduleRoot(t), WorkDir: t.TempDir(), Logf: t.Logf}, []Suite{hangSuite})
	if err != nil {
		t.Fatal(err)
	}
	return k, l
}

// outliving runs TestGuestThatOutlivesItsTest in a child test binary whose
// temporary files all go under a directory of this test. It returns the
// child, its output so far and that directory; cleanup kills any process
// still naming the directory (QEMU is started with its files there).
func outliving(t *testing.T, timeout time.Duration) (*exec.Cmd, *bufio.Reader, string) {
	t.Helper()
	if os.Getenv(EnvSkip) != "" {
		t.Skipf("%s is set", EnvSkip)
	}
	if err := Check(); err != nil {
		t.Skip("VM lab: " + err.Error())
	}
	// The kernel download and the guest's test binary are made here, out
	// of the child's -timeout, so a cold cache cannot eat it.
	hangLab(t, labContext(t))
	tmp := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestGuestThatOutlivesItsTest$", "-test.v", "-test.count=1",
		"-test.timeout="+timeout.String())
	cmd.Env = append(os.Environ(), envOutlive+"=1", "TMPDIR="+tmp)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		for _, pid := range processesNaming(tmp) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return cmd, bufio.NewReader(out), tmp
}

// processesNaming lists the processes with s in their command line.
func processesNaming(s string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if cl, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline")); err == nil && bytes.Contains(cl, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// readUntil reads the child's output until a line containing want, and
// returns everything read.
func readUntil(r *bufio.Reader, want string) (string, error) {
	var all strings.Builder
	for {
		line, err := r.ReadString('\n')
		all.WriteString(line)
		if strings.Contains(line, want) {
			return all.String(), nil
		}
		if err != nil {
			return all.String(), err
		}
	}
}

// A guest still running when go test's -timeout comes is stopped and
// reported by the lab, which then removes its files; the test binary does
// not panic with QEMU left running.
func TestVMStopsTheGuestBeforeGoTestTimesOut(t *testing.T) {
	cmd, out, tmp := outliving(t, 90*time.Second)
	rest, _ := io.ReadAll(out)
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || strings.Contains(string(rest), "panic: test timed out") ||
		!strings.Contains(string(rest), "stopped the guest before it finished: go test's -timeout") {
		t.Fatalf("want the child to fail with the lab's stop (exit 1) before go test's timeout; got %v:\n%s", err, rest)
	}
	if !strings.Contains(string(rest), "BEGIN hang") {
		t.Fatalf("the child stopped before its guest ran the suite, so this proves nothing about stopping a guest:\n%s", rest)
	}
	if pids := processesNaming(tmp); len(pids) > 0 {
		t.Errorf("the guest outlived its test: processes %v still run from %s", pids, tmp)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("the child left %d entries in its temporary directory, e.g. %s", len(left), left[0].Name())
	}
}

// A test binary killed outright (SIGKILL runs no cleanup) takes its guest
// with it.
func TestVMGuestDiesWithItsTest(t *testing.T) {
	cmd, out, tmp := outliving(t, 10*time.Minute)
	if seen, err := readUntil(out, "BEGIN hang"); err != nil {
		t.Fatalf("the guest never started its suite: %v\n%s", err, seen)
	}
	if len(processesNaming(tmp)) == 0 {
		t.Fatal("no QEMU process names the child's directory; the check below would prove nothing")
	}
	cmd.Process.Kill()
	cmd.Wait()
	// The kernel delivers the parent-death signal as the child exits; give
	// the dying QEMU a moment to leave the process table.
	for range 100 {
		if len(processesNaming(tmp)) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("QEMU still runs after its test binary was killed: %v", processesNaming(tmp))
}
