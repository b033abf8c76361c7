package firewall

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Privileged tests build their world from fresh network namespaces named
// zltf-<random>-<role>; the root namespace's ruleset is never touched.

// needRoot skips unless the test can create namespaces and has every
// observer tool it names.
func needRoot(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces and nftables tables")
	}
	for _, tool := range append([]string{"ip", "nft"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs the %q binary as a test observer; install it (apt-get install iproute2 nftables tcpdump iputils-ping iptables)", tool)
		}
	}
}

// runID is a short random tag that keeps names unique across parallel test
// runs of several engineers on one machine.
func runID(t testing.TB) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// netNS is a named namespace created with `ip netns add` and an open fd
// to it for InNetNS.
type netNS struct {
	name string
	fd   int
}

func newNetNS(t testing.TB, name string) netNS {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("cleanup: ip netns del %s: %v: %s", name, err, out)
		}
	})
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatalf("opening namespace %s: %v", name, err)
	}
	// The cleanup closure keeps f reachable, so its finalizer cannot
	// close the fd while the test still uses it.
	t.Cleanup(func() { f.Close() })
	return netNS{name: name, fd: int(f.Fd())}
}

// fw returns a Firewall acting inside ns.
func (ns netNS) fw() *Firewall { return InNetNS(ns.fd) }

// exec runs a command inside ns and returns its combined output.
func (ns netNS) exec(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns.name}, args...)...)
}

// try runs a command inside ns and reports whether it succeeded.
func (ns netNS) try(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	return string(out), err
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nftObjects is `nft -j list ruleset` split into its objects, each as
// {"kind": {...fields}}.
type nftObjects []map[string]map[string]any

func (ns netNS) ruleset(t testing.TB) nftObjects {
	t.Helper()
	out := ns.exec(t, "nft", "-j", "list", "ruleset")
	var doc struct {
		Nftables nftObjects `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("decoding nft -j output: %v\n%s", err, out)
	}
	var objs nftObjects
	for _, o := range doc.Nftables {
		if _, meta := o["metainfo"]; !meta {
			objs = append(objs, o)
		}
	}
	return objs
}

// of returns the objects of one kind ("table", "chain", "rule", "set")
// that belong to table family/name (for kind "table": that table).
func (objs nftObjects) of(kind, family, table string) []map[string]any {
	var out []map[string]any
	for _, o := range objs {
		v, ok := o[kind]
		if !ok || v["family"] != family {
			continue
		}
		name := v["table"]
		if kind == "table" {
			name = v["name"]
		}
		if name == table {
			out = append(out, v)
		}
	}
	return out
}

// tables lists "family name" of every table.
func (objs nftObjects) tables() []string {
	var out []string
	for _, o := range objs {
		if v, ok := o["table"]; ok {
			out = append(out, fmt.Sprintf("%v %v", v["family"], v["name"]))
		}
	}
	return out
}

// inNetNS runs fn on an OS thread inside ns, for sockets that must be
// created there. The thread is never returned to the scheduler's pool
// (the goroutine exits locked), so no other goroutine inherits the
// namespace.
func inNetNS(t testing.TB, ns netNS, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns into %s: %w", ns.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// capture is a tcpdump running inside a namespace until it has seen count
// packets matching a filter.
type capture struct {
	cmd  *exec.Cmd
	out  strings.Builder
	done chan error
}

// startCapture starts tcpdump and returns once it is listening, so the
// packets sent afterwards cannot be missed.
func startCapture(t testing.TB, ns netNS, iface string, count int, verbose bool, filter string) *capture {
	t.Helper()
	args := []string{"netns", "exec", ns.name, "tcpdump", "-n", "-l", "-i", iface, "-c", fmt.Sprint(count)}
	if verbose {
		args = append(args, "-v")
	}
	args = append(args, filter)
	c := &capture{cmd: exec.Command("ip", args...), done: make(chan error, 1)}
	c.cmd.Stdout = &c.out
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting tcpdump: %v", err)
	}
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.done
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "listening on") {
				close(ready)
				signalled = true
			}
		}
		if !signalled {
			close(ready)
		}
		_, _ = io.Copy(io.Discard, stderr)
		c.done <- c.cmd.Wait()
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not start listening within 10s")
	}
	return c
}

// wait returns what tcpdump printed once it has its packets, or fails the
// test if they do not arrive within limit.
func (c *capture) wait(t testing.TB, limit time.Duration) string {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err // let the cleanup's receive complete
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("tcpdump: %v", err)
		}
		return c.out.String()
	case <-time.After(limit):
		_ = c.cmd.Process.Kill()
		err := <-c.done
		c.done <- err
		t.Fatalf("tcpdump saw fewer packets than expected within %v; output so far:\n%s", limit, c.out.String())
	}
	return ""
}

// pingOK reports whether one ping from ns to dst got an answer.
func pingOK(ns netNS, dst string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "ip", "netns", "exec", ns.name, "ping", "-n", "-c", "1", "-W", "2", dst).Run() == nil
}
