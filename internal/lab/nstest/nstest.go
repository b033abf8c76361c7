// Package nstest holds what the privileged tests of single packages (wg,
// nat) share to run code in network namespaces: the root check, namespace
// set-up and removal, and helper processes.
//
// A helper process is the test binary re-executed under "ip netns exec"
// and driven with JSON lines over its stdin and stdout. That is the only
// reliable way to run wireguard-go in a namespace: it opens its sockets in
// the namespace of whichever thread brings the bind up, and its goroutines
// are not pinned to threads. The package under test provides a
// TestHelperProcess that, when the helper environment variable is set,
// serves requests and exits.
//
// The multi-node daemon test beds are package lab; this is the small
// toolkit below them.
package nstest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// RequireRoot skips t unless it runs as root on a machine with /dev/net/tun
// and every tool named; creates says what the test builds, for the skip
// message.
func RequireRoot(t testing.TB, creates string, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates " + creates)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs the %s tool, which is not installed", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v", err)
	}
}

// Run runs a command and returns its combined output, failing t if it fails.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// RandHex returns n random hex digits: the per-run part of the names of
// what a test creates, so that runs never collide.
func RandHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)[:n]
}

// NewNetns creates a network namespace with loopback up, deleted when the
// test ends (after the helper processes started in it later, since
// cleanups run last-registered-first).
func NewNetns(t testing.TB, name string) {
	t.Helper()
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// Helper is the test's handle on a helper process.
type Helper struct {
	t   testing.TB
	ns  string
	pid int
	in  io.WriteCloser
	out *bufio.Reader
}

// StartHelper re-executes the test binary's TestHelperProcess inside ns with
// env (KEY=value entries, among them the variable that makes
// TestHelperProcess serve). Its stderr goes to the test log. When the test
// ends its stdin is closed, and it is killed if it has not exited 15 s later.
func StartHelper(t testing.TB, ns string, env ...string) *Helper {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &LogWriter{T: t, Prefix: ns + ": "}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		in.Close()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return &Helper{t: t, ns: ns, pid: cmd.Process.Pid, in: in, out: bufio.NewReader(out)}
}

// NS is the namespace the helper runs in.
func (h *Helper) NS() string { return h.ns }

// PID is the helper's process. `ip netns exec` enters the namespace and
// execs the test binary in place, so this is the helper itself once it has
// answered anything, and `ip` for a moment before: a test that looks for the
// helper among the namespace's processes right after StartHelper can miss it.
func (h *Helper) PID() int { return h.pid }

// ReadLine reads one line the helper wrote, for helpers that announce
// themselves ("ready") instead of answering requests.
func (h *Helper) ReadLine() (string, error) { return h.out.ReadString('\n') }

// Call sends req as one JSON line and decodes the helper's one-line answer
// into resp. It fails t when the helper dies or does not answer within
// timeout; op names the request in those messages.
func (h *Helper) Call(op string, req, resp any, timeout time.Duration) {
	h.t.Helper()
	if err := json.NewEncoder(h.in).Encode(req); err != nil {
		h.t.Fatalf("%s: send %s: %v", h.ns, op, err)
	}
	type answer struct {
		line []byte
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		line, err := h.out.ReadBytes('\n')
		ch <- answer{line, err}
	}()
	select {
	case a := <-ch:
		if a.err == nil {
			a.err = json.Unmarshal(a.line, resp)
		}
		if a.err != nil {
			h.t.Fatalf("%s: %s: helper process died: %v", h.ns, op, a.err)
		}
	case <-time.After(timeout):
		h.t.Fatalf("%s: %s: helper process did not answer", h.ns, op)
	}
}

// Send sends req without waiting for an answer, for a test that kills
// the helper while the request is under way.
func (h *Helper) Send(op string, req any) {
	h.t.Helper()
	if err := json.NewEncoder(h.in).Encode(req); err != nil {
		h.t.Fatalf("%s: send %s: %v", h.ns, op, err)
	}
}

// CallUntilExit sends req, which makes the helper exit without answering
// (a simulated crash), and waits until its output closes.
func (h *Helper) CallUntilExit(op string, req any, timeout time.Duration) {
	h.t.Helper()
	if err := json.NewEncoder(h.in).Encode(req); err != nil {
		h.t.Fatalf("%s: send %s: %v", h.ns, op, err)
	}
	ch := make(chan error, 1)
	go func() {
		_, err := h.out.ReadBytes('\n')
		ch <- err
	}()
	select {
	case err := <-ch:
		if err == nil {
			h.t.Fatalf("%s: %s: the helper answered instead of exiting", h.ns, op)
		}
	case <-time.After(timeout):
		h.t.Fatalf("%s: %s: the helper did not exit", h.ns, op)
	}
}

// LogWriter forwards a process's output to the test log, line by line.
type LogWriter struct {
	T      testing.TB
	Prefix string
	buf    []byte
}

func (w *LogWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		func() {
			defer func() { recover() }() // the test may already have finished
			w.T.Log(w.Prefix + line)
		}()
	}
}
