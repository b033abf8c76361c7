package linuxnet

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Privileged tests run inside a network namespace of their own ("host" namespace), entered
// by re-executing the test binary with `ip netns exec`, so nothing they do can reach the
// namespace the test was started in. Every name starts with "zltl" plus a random id.
const (
	envHostNetns = "ZLTL_HOST_NETNS"
	envTestID    = "ZLTL_TEST_ID"
)

func requirePrivileges(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces, bridges and veth pairs")
	}
	for _, bin := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipped: needs the %s binary", bin)
		}
	}
}

func randomID(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// testID is the random id of this test run, shared between the parent and the re-executed
// child so that names are unique per run and the parent can sweep what the child left.
func testID(t testing.TB) string {
	id := os.Getenv(envTestID)
	if id == "" {
		t.Fatal("testID called outside a host namespace")
	}
	return id
}

// inHostNetns runs the calling top-level test in a fresh network namespace. In the `go test`
// process it creates the namespace, re-executes this test binary there restricted to this
// one test, relays the child's output, and returns false: the caller must return. In the
// re-executed process it returns true and the test body runs.
func inHostNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envHostNetns) != "" {
		return true
	}
	requirePrivileges(t)
	id := randomID(t)
	name := "zltl-" + id + "-h"
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		// The child deletes its container namespaces itself; if it crashed, their files
		// are still in /run/netns (the bind mounts died with the child's mount namespace).
		leftovers, _ := filepath.Glob("/run/netns/zltl-" + id + "-*")
		for _, l := range leftovers {
			_ = exec.Command("ip", "netns", "del", filepath.Base(l)).Run()
		}
	})
	args := []string{"netns", "exec", name, os.Args[0],
		"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), envHostNetns+"="+name, envTestID+"="+id)
	out, err := cmd.CombinedOutput()
	t.Logf("inside network namespace %s:\n%s", name, out)
	if err == nil && strings.Contains(string(out), "--- SKIP: "+t.Name()) {
		t.Skip("skipped inside the namespace")
	}
	if err != nil {
		t.Fatalf("%s failed inside network namespace %s: %v", t.Name(), name, err)
	}
	return false
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newTestNet(t testing.TB) *Net {
	t.Helper()
	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// container is a stand-in for a container: a sleep process in a network namespace of its own.
type container struct {
	ns  string
	pid int
	cmd *exec.Cmd
}

func newContainer(t testing.TB, tag string) *container {
	t.Helper()
	return newNamedContainer(t, "zltl-"+testID(t)+"-"+tag)
}

func newNamedContainer(t testing.TB, name string) *container {
	t.Helper()
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return startContainer(t, name)
}

func startContainer(t testing.TB, name string) *container {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", name, "sleep", "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &container{ns: name, pid: cmd.Process.Pid, cmd: cmd}
	t.Cleanup(c.stop)
	// `ip netns exec` enters the namespace and then execs sleep under the same pid. Wait
	// until that happened, or a test could attach to a process still in the host namespace.
	want := fileInode(t, "/run/netns/"+name)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := NetnsInode(c.pid)
		if err == nil && got == want {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never entered network namespace %s (last error %v)", c.pid, name, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func (c *container) stop() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	}
}

func (c *container) run(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", c.ns}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *container) mustPing(t testing.TB, addr string) {
	t.Helper()
	if out, err := c.run("ping", "-c", "1", "-W", "5", addr); err != nil {
		t.Errorf("ping %s from %s: %v\n%s", addr, c.ns, err, out)
	}
}

func fileInode(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// The observers below read kernel state through iproute2, independently of the code under test.

type ipLink struct {
	Index    int      `json:"ifindex"`
	Name     string   `json:"ifname"`
	Flags    []string `json:"flags"`
	MTU      int      `json:"mtu"`
	Master   string   `json:"master"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
	} `json:"addr_info"`
}

func (l ipLink) up() bool {
	for _, f := range l.Flags {
		if f == "UP" {
			return true
		}
	}
	return false
}

// globalAddrs lists the link's global-scope addresses as "addr/len".
func (l ipLink) globalAddrs() []string {
	var out []string
	for _, a := range l.AddrInfo {
		if a.Scope == "global" {
			out = append(out, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
	}
	return out
}

func ipCmd(ns string, args ...string) []string {
	base := []string{"-j", "-d"}
	if ns != "" {
		base = append(base, "-n", ns)
	}
	return append(base, args...)
}

// ipLinks lists the links of namespace ns ("" = the test's own) with their addresses.
func ipLinks(t testing.TB, ns string) map[string]ipLink {
	t.Helper()
	var links []ipLink
	if err := json.Unmarshal([]byte(mustRun(t, "ip", ipCmd(ns, "addr", "show")...)), &links); err != nil {
		t.Fatal(err)
	}
	m := map[string]ipLink{}
	for _, l := range links {
		m[l.Name] = l
	}
	return m
}

// addrGenMode is how the kernel makes the link's IPv6 link-local address:
// "eui64" and the like, or "none" (`ip addr` does not say; `ip link` does).
func addrGenMode(t testing.TB, ns, name string) string {
	t.Helper()
	var links []struct {
		Mode string `json:"inet6_addr_gen_mode"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "ip", ipCmd(ns, "link", "show", "dev", name)...)), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip link show %s: %v (%d links)", name, err, len(links))
	}
	return links[0].Mode
}

func ipLinkOf(t testing.TB, ns, name string) ipLink {
	t.Helper()
	l, ok := ipLinks(t, ns)[name]
	if !ok {
		t.Fatalf("no link %s in namespace %q", name, ns)
	}
	return l
}

type ipRoute struct {
	Dst     string   `json:"dst"`
	Gateway string   `json:"gateway"`
	Dev     string   `json:"dev"`
	Scope   string   `json:"scope"`
	PrefSrc string   `json:"prefsrc"`
	Flags   []string `json:"flags"`
}

// ipRoutes lists the main-table routes of namespace ns for one family ("-4" or "-6").
func ipRoutes(t testing.TB, ns, family string) []ipRoute {
	t.Helper()
	var routes []ipRoute
	out := mustRun(t, "ip", ipCmd(ns, family, "route", "show")...)
	if strings.TrimSpace(out) == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return routes
}
