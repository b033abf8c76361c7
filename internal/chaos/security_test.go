//go:build linux

package chaos

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// The security suite: what docs/security.md promises, checked against the
// real daemon (or, for the source rule, the source).

// A state file another user can read is tightened to 0600 at start, with a
// warning that says so (the daemon fixes rather than refuses: refusing over
// a permission bit would keep the node's overlay down, tightening loses
// nothing).
func TestLooseStateFileIsTightenedAtStart(t *testing.T) {
	d := newTarget(t)
	var dataDir string
	if d.node != nil {
		dataDir = d.node.DataDir
		d.node.Stop()
	} else {
		dataDir = d.proc.dataDir
		d.proc.stop()
	}
	db := filepath.Join(dataDir, store.FileName)
	if err := os.Chmod(db, 0o644); err != nil {
		t.Fatal(err)
	}
	d.restart()
	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode after a start: %v, want 0600", fi.Mode().Perm())
	}
	var log string
	if d.node != nil {
		b, _ := os.ReadFile(d.node.LogPath())
		log = string(b)
	} else {
		log = d.proc.log.String()
	}
	if !strings.Contains(log, "changed its mode to 0600") || !strings.Contains(log, "old_mode=0644") {
		t.Fatalf("the daemon did not say it tightened the state file:\n%s", log)
	}
}

// What is on disk and who may read it: the state file 0600 in a 0700 data
// directory, the control socket 0660, the WireGuard UAPI socket (which
// hands out the private key to whoever connects) reachable by root only,
// and a private key given to the daemon never appears in its log or in a
// status answer.
func TestSecretsStayPrivate(t *testing.T) {
	if err := lab.Check(); err != nil {
		t.Skip("needs a lab node (a WireGuard device): " + err.Error())
	}
	l := lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
	n := l.AddNode("a", "--dns-port", "0")
	priv, err := wg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	n.Call(protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "1", ClusterCIDR: clusterCIDR, SliceCIDR: "10.77.1.0/24", WGPort: wgPort, PrivateKey: priv.String()})
	n.Call(protocol.SetupServiceOverlay{Service: "db", Mode: protocol.ModeDedicated})
	s := n.Status()
	if s.PublicKey != priv.PublicKey().String() {
		t.Fatalf("the device does not use the key it was given")
	}
	for path, want := range map[string]fs.FileMode{
		filepath.Join(n.DataDir, store.FileName): 0o600,
		n.Socket:                                 0o660,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	for _, dev := range []string{globalIface, s.DedicatedServices[0].Interface} {
		out := n.MustExec("stat", "-c", "%a %U", "/var/run/wireguard/"+dev+".sock")
		mode, owner, _ := strings.Cut(strings.TrimSpace(out), " ")
		if owner != "root" || (mode != "700" && mode != "600") {
			t.Errorf("UAPI socket of %s: mode %s owner %s; it hands out the private key, so root only", dev, mode, owner)
		}
	}
	raw, err := dialRaw(t, n.Socket).status(1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(n.LogPath())
	for what, text := range map[string]string{"daemon log": string(b), "status": digest(raw)} {
		if strings.Contains(text, priv.String()) {
			t.Errorf("the private key appears in the %s", what)
		}
	}
}

// A daemon started on a data directory that does not exist yet creates it
// private: the directory 0700, the state file 0600, the socket 0660.
func TestNewDataDirIsPrivate(t *testing.T) {
	data := filepath.Join(t.TempDir(), "fresh", "data")
	p := startProc(t, data, "--dns-port", "0", "--firewall=false")
	for path, want := range map[string]fs.FileMode{
		filepath.Dir(data):                  0o700,
		data:                                0o700,
		filepath.Join(data, store.FileName): 0o600,
		p.socket:                            0o660,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
}

// A caller the peer-credential check refuses gets its err frame and
// nothing else: a request it wrote before reading the refusal (here, a
// shutdown) is never read. (cmd/zlayer-overlayd's TestUnrelatedUIDIsRefused
// covers the 0660 mode and the refusal itself.)
func TestRefusedCallerCannotActByWritingFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	d := newTarget(t)
	before, err := dialRaw(t, d.socket).status(1)
	if err != nil {
		t.Fatal(err)
	}
	// Let the kernel pass the unrelated uid; the daemon must still refuse.
	for dir := filepath.Dir(d.socket); dir != "/" && dir != os.TempDir(); dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(d.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	ctl := testbin.Build(t, "overlayctl")
	for range 5 {
		cmd := exec.Command(ctl, "--socket", d.socket, "--timeout", "3s", "call", `{"op":"shutdown"}`)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "permission denied") || !strings.Contains(string(out), "uid 65534") {
			t.Fatalf("nobody was not refused by the peer-credential check: %v\n%s", err, out)
		}
	}
	time.Sleep(200 * time.Millisecond) // a shutdown that got through would have stopped the daemon by now
	after, err := dialRaw(t, d.socket).status(1)
	if err != nil {
		t.Fatalf("the daemon stopped serving after refused callers sent shutdown: %v", err)
	}
	if digest(after) != digest(before) {
		t.Fatalf("state changed:\n%s", diffLines(digest(before), digest(after)))
	}
}

// The embedded DNS server answers only what arrives on loopback, a bridge
// or an overlay device, and forwards other names only for the node, the
// cluster and its subnets. A second node whose underlay address is outside
// the cluster, routing the node IP via a, gets no answer at all, not even
// for the zone; on the node itself a query for an outside name is
// forwarded from the node IP, and REFUSED from an address outside the
// cluster. Checked through the real listener on the node IP.
func TestDNSIsNotAnOpenResolver(t *testing.T) {
	if err := lab.Check(); err != nil {
		t.Skip("needs two lab nodes to query from outside the cluster: " + err.Error())
	}
	l := lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
	// The upstream is an address on the underlay where nobody answers: a
	// forwarded query ends in SERVFAIL, a refused one never leaves.
	a := l.AddNode("a", "--dns-port", "0", "--dns-upstream", "172.31.0.250:53")
	outside := l.AddNode("b", "--dns-port", "0")
	a.Call(protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "1", ClusterCIDR: clusterCIDR, SliceCIDR: "10.77.1.0/24", WGPort: wgPort})
	a.Call(protocol.RegisterDNS{Name: "web", IP: netip.MustParseAddr("10.77.1.5")})
	nodeIP := "10.77.1.1"
	outside.MustExec("ip", "route", "add", nodeIP+"/32", "via", a.Underlay.String())
	dig := func(from *lab.Node, args ...string) string {
		t.Helper()
		out, _ := from.Exec(append([]string{"dig", "+tries=1", "+time=3", "+noall", "+comments", "+answer", "@" + nodeIP}, args...)...)
		return out
	}
	lab.Eventually(t, 10*time.Second, "DNS answers on "+nodeIP, func() error {
		if out := dig(a, "web."+zone, "A"); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "10.77.1.5") {
			return fmt.Errorf("the zone is not answered on the node:\n%s", out)
		}
		return nil
	})
	if err := outside.Ping(netip.MustParseAddr(nodeIP), 1); err != nil {
		t.Fatalf("the outside node does not reach %s at all, so the test proves nothing: %v", nodeIP, err)
	}
	for _, name := range []string{"web." + zone, "example.org"} {
		if out := dig(outside, name, "A"); strings.Contains(out, "status:") {
			t.Fatalf("a query for %s from %s (outside the cluster, on the underlay) was answered:\n%s", name, outside.Underlay, out)
		}
	}
	if out := dig(a, "-b", a.Underlay.String(), "example.org", "A"); !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("a query for an outside name from %s (outside the cluster) was not refused:\n%s", a.Underlay, out)
	}
	if out := dig(a, "-b", nodeIP, "example.org", "A"); !strings.Contains(out, "status: SERVFAIL") {
		t.Fatalf("a query for an outside name from the node IP was not forwarded:\n%s", out)
	}
}

// No command is ever run with request data: outside the test harness
// (internal/lab), the test build helper (internal/testbin) and the
// benchmark harness (bench/, which drives iperf3, dnsperf and the peers we
// compare with and is never part of the daemon), no Go file of the module
// may start a process at all, with two exceptions, each from exactly one
// call: the userspace WireGuard data plane (internal/wg/dataplane_linux.go)
// runs the daemon's own executable with a validated device name, numbers
// and the state file's path; and overlayctl doctor (internal/doctor, never
// part of the daemon) runs iptables-legacy-save with a fixed command line
// to read a legacy firewall nftables cannot show. Everything else goes
// through netlink, nftables and wgctrl, so there is no command line to
// inject into. Our wireguard-go fork (third_party/wireguard) is checked
// too, as code linked into the daemon, but for its package main files:
// upstream's own wireguard-go command and examples, which nothing of ours
// links (the command daemonizes itself by starting a process).
func TestNoProcessIsStartedOutsideTestHelpers(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	allowed := map[string]bool{"internal/lab": true, "internal/testbin": true, "bench": true}
	forbidden := map[string]map[string]bool{
		"os/exec":               {"Command": true, "CommandContext": true},
		"os":                    {"StartProcess": true},
		"syscall":               {"Exec": true, "ForkExec": true, "StartProcess": true},
		"golang.org/x/sys/unix": {"Exec": true},
	}
	// The processes that may be started, and the call sites starting them.
	exceptions := map[string]int{"internal/wg/dataplane_linux.go": 0, "internal/doctor/host_linux.go": 0}
	checked := 0
	err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if de.IsDir() {
			if strings.HasPrefix(de.Name(), ".") && rel != "." || de.Name() == "testdata" || allowed[filepath.ToSlash(rel)] {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		checked++
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		if f.Name.Name == "main" && strings.HasPrefix(filepath.ToSlash(rel), "third_party/") {
			return nil
		}
		names := map[string]string{} // local name -> import path
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			name := p[strings.LastIndex(p, "/")+1:]
			if imp.Name != nil {
				name = imp.Name.Name
			}
			names[name] = p
			if _, ok := exceptions[filepath.ToSlash(rel)]; p == "os/exec" && !ok {
				t.Errorf("%s imports os/exec", rel)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && forbidden[names[pkg.Name]][sel.Sel.Name] {
				if _, ok := exceptions[filepath.ToSlash(rel)]; ok && names[pkg.Name] == "os/exec" && sel.Sel.Name == "Command" {
					exceptions[filepath.ToSlash(rel)]++
				} else {
					t.Errorf("%s: %s.%s starts a process", rel, names[pkg.Name], sel.Sel.Name)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for file, calls := range exceptions {
		if calls != 1 {
			t.Errorf("%s starts a process in %d places; its exception allows exactly one", file, calls)
		}
	}
	if checked < 50 {
		t.Fatalf("only %d Go files checked; is the module root %s right?", checked, root)
	}
}
