//go:build linux

// Package lab builds multi-node overlay test beds out of network namespaces
// on one machine: an underlay "switch", nodes that each run a real
// zlayer-overlayd process, and containers (processes in their own network
// namespace). Privileged end-to-end tests and `make demo` use it.
//
// Every name a lab creates carries its random id, so concurrent labs (and
// other tests) never collide, and everything is removed by Close, which is
// registered as a cleanup when the lab is built.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TB is the part of testing.TB a lab needs; the demo supplies its own.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Options configure a lab.
type Options struct {
	// Daemon is the zlayer-overlayd binary every node runs.
	Daemon string
	// Underlay is the switch's subnet; node i gets host i+1 (default
	// 172.31.0.0/24).
	Underlay netip.Prefix
	// DaemonArgs are added to every node's command line.
	DaemonArgs []string
	// KeepLogs copies the daemons' logs into the test log on Close even
	// when the test passed.
	KeepLogs bool
}

// Lab is one test bed.
type Lab struct {
	t    TB
	opts Options
	ID   string
	dir  string

	switchNS string

	mu         sync.Mutex
	nodes      []*Node
	containers []*Container
	nsList     []string
	closed     bool
}

// Check reports why labs cannot run here, or nil.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, devices)")
	}
	for _, bin := range []string{"ip", "nsenter", "unshare", "mount"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("needs %s on PATH", bin)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return errors.New("needs /dev/net/tun")
	}
	return nil
}

// New builds the underlay switch of a lab.
func New(t TB, opts Options) *Lab {
	t.Helper()
	if err := Check(); err != nil {
		t.Fatalf("lab: %v", err)
	}
	if !opts.Underlay.IsValid() {
		opts.Underlay = netip.MustParsePrefix("172.31.0.0/24")
	}
	var b [3]byte
	rand.Read(b[:])
	l := &Lab{t: t, opts: opts, ID: hex.EncodeToString(b[:])[:5]}
	dir, err := os.MkdirTemp("", "zlab-"+l.ID+"-")
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	l.dir = dir
	t.Cleanup(l.Close)
	l.switchNS = l.nsName("sw")
	l.addNS(l.switchNS)
	l.must("ip", "-n", l.switchNS, "link", "add", "br0", "type", "bridge")
	l.must("ip", "-n", l.switchNS, "link", "set", "br0", "up")
	l.must("ip", "-n", l.switchNS, "link", "set", "lo", "up")
	return l
}

// Dir is the lab's scratch directory.
func (l *Lab) Dir() string { return l.dir }

func (l *Lab) nsName(suffix string) string { return "zlt" + l.ID + "-" + suffix }

// linkName is a root-namespace-unique interface name (≤ 15 bytes) for
// links that are created in the root namespace and then moved.
func (l *Lab) linkName(suffix string) string {
	n := "zt" + l.ID + suffix
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

func (l *Lab) addNS(name string) {
	l.must("ip", "netns", "add", name)
	l.mu.Lock()
	l.nsList = append(l.nsList, name)
	l.mu.Unlock()
}

// must runs a setup command and fails the test when it fails.
func (l *Lab) must(args ...string) string {
	l.t.Helper()
	out, err := run(args...)
	if err != nil {
		l.t.Fatalf("lab: %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

// attachToSwitch wires namespace ns to the underlay switch with address
// addr on interface ifname, returning the switch-side port name.
func (l *Lab) attachToSwitch(ns, ifname string, addr netip.Prefix, tag string) {
	l.t.Helper()
	a, b := l.linkName(tag+"a"), l.linkName(tag+"b")
	l.must("ip", "link", "add", a, "type", "veth", "peer", "name", b)
	l.must("ip", "link", "set", a, "netns", l.switchNS)
	l.must("ip", "link", "set", b, "netns", ns)
	l.must("ip", "-n", l.switchNS, "link", "set", a, "master", "br0", "up")
	l.must("ip", "-n", ns, "link", "set", b, "name", ifname)
	if addr.Addr().Is6() {
		// No duplicate address detection: the address is usable at once
		// instead of after a second or two as "tentative".
		l.must("ip", "-n", ns, "addr", "add", addr.String(), "dev", ifname, "nodad")
	} else {
		l.must("ip", "-n", ns, "addr", "add", addr.String(), "dev", ifname)
	}
	l.must("ip", "-n", ns, "link", "set", ifname, "up")
	l.must("ip", "-n", ns, "link", "set", "lo", "up")
}

// underlayAddr is host number n of the underlay subnet, with its prefix.
func (l *Lab) underlayAddr(n int) netip.Prefix {
	a := l.opts.Underlay.Addr()
	for range n {
		a = a.Next()
	}
	return netip.PrefixFrom(a, l.opts.Underlay.Bits())
}

// Nodes returns the lab's nodes in creation order.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// Close stops every daemon and container and deletes every namespace,
// link and file the lab made. It is safe to call more than once.
func (l *Lab) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	nodes, containers, nsList := l.nodes, l.containers, l.nsList
	l.mu.Unlock()
	for _, c := range containers {
		c.Kill()
	}
	for _, n := range nodes {
		n.stop(true)
		if n.logFile != nil {
			n.logFile.Close()
		}
		// What the daemon left running in the node: its detached WireGuard
		// data planes (they outlive the daemon by design).
		killNetnsProcs(n.NS)
	}
	if l.opts.KeepLogs || failed(l.t) {
		for _, n := range nodes {
			if b, err := os.ReadFile(n.LogPath()); err == nil {
				l.t.Logf("=== daemon log of node %s ===\n%s", n.Name, b)
			}
			logs, _ := filepath.Glob(filepath.Join(n.DataDir, "dataplane-*.log"))
			for _, p := range logs {
				if b, err := os.ReadFile(p); err == nil {
					l.t.Logf("=== %s of node %s ===\n%s", filepath.Base(p), n.Name, b)
				}
			}
		}
	}
	for i := len(nsList) - 1; i >= 0; i-- {
		if out, err := run("ip", "netns", "delete", nsList[i]); err != nil {
			l.t.Logf("lab cleanup: ip netns delete %s: %v %s", nsList[i], err, out)
		}
	}
	// Links created in the root namespace and never moved (a failed
	// setup) carry the lab id.
	if out, err := run("ip", "-o", "link", "show"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) > 1 {
				name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
				if strings.HasPrefix(name, "zt"+l.ID) {
					run("ip", "link", "delete", name)
				}
			}
		}
	}
	os.RemoveAll(l.dir)
}

func failed(t TB) bool {
	if f, ok := t.(interface{ Failed() bool }); ok {
		return f.Failed()
	}
	return false
}

// Eventually polls cond every 100 ms until it returns nil or timeout
// passes, then fails with cond's last error.
func Eventually(t TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v: %v", what, timeout, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// AddNetns creates a bare network namespace with lo up, the way a CNI
// runtime makes one for a container (`ip netns add`), and returns its name
// and its file in /run/netns. Close deletes it.
func (l *Lab) AddNetns(name string) (ns, path string) {
	l.t.Helper()
	ns = l.nsName(name)
	l.addNS(ns)
	l.must("ip", "-n", ns, "link", "set", "lo", "up")
	return ns, "/run/netns/" + ns
}

// DeleteNetns deletes a namespace made by AddNetns, as a runtime deletes a
// container's: the processes and links in it go with it.
func (l *Lab) DeleteNetns(ns string) {
	l.t.Helper()
	l.must("ip", "netns", "delete", ns)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nsList = slices.DeleteFunc(l.nsList, func(n string) bool { return n == ns })
}

// DataDir for a node inside the lab's directory.
func (l *Lab) nodeDir(name string) string { return filepath.Join(l.dir, name) }

// Host is a plain machine on the underlay without a daemon: "the internet"
// for egress tests, a STUN server's home, a router.
type Host struct {
	lab  *Lab
	Name string
	NS   string
	Addr netip.Addr
}

// AddHost attaches a namespace to the underlay at host number n.
func (l *Lab) AddHost(name string, n int) *Host {
	l.t.Helper()
	h := &Host{lab: l, Name: name, NS: l.nsName(name), Addr: l.underlayAddr(n).Addr()}
	l.addNS(h.NS)
	l.attachToSwitch(h.NS, "eth0", l.underlayAddr(n), "h"+name)
	return h
}

// Exec runs a command in the host's namespace.
func (h *Host) Exec(args ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", h.NS}, args...)...)
}

// Start runs a long-lived command in the host's namespace until the lab
// closes; it returns the process so tests can wait for it.
func (h *Host) Start(args ...string) *exec.Cmd {
	h.lab.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, args...)...)
	if err := cmd.Start(); err != nil {
		h.lab.t.Fatalf("lab: %s: %v", strings.Join(args, " "), err)
	}
	h.lab.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// Ping sends count pings to addr from the host and reports success.
func (h *Host) Ping(addr netip.Addr, count int) error { return ping(h.Exec, addr, count) }

// AddOutsider attaches a host to the underlay at host number n that is
// not part of the cluster but routes prefixes (the cluster CIDR, say) via
// node via: what any machine on a node's L2 segment can do. Isolation
// tests check what such a neighbour reaches.
func (l *Lab) AddOutsider(name string, n int, via *Node, prefixes ...netip.Prefix) *Host {
	l.t.Helper()
	h := l.AddHost(name, n)
	for _, p := range prefixes {
		l.must("ip", "-n", h.NS, "route", "add", p.Masked().String(), "via", via.Underlay.String())
	}
	return h
}

// killNetnsProcs SIGKILLs every process in network namespace ns and waits
// (briefly) until none is left.
func killNetnsProcs(ns string) {
	for range 50 {
		out, err := run("ip", "netns", "pids", ns)
		pids := strings.Fields(out)
		if err != nil || len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}
