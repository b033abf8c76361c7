//go:build linux

package e2e

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

const metricsAddr = "127.0.0.1:9464"

// operatorLab is two meshed nodes with a service "web", a container on
// node a with a DNS name, and a handshake between the nodes: what an
// operator looks at.
type operatorLab struct {
	l    *lab.Lab
	a, b *lab.Node
	st   []protocol.StatusSnapshot
	c    *lab.Container
	cIP  netip.Addr
	ctl  string
}

func newOperatorLab(t *testing.T) *operatorLab {
	t.Helper()
	l := newLab(t, "--metrics-listen", metricsAddr)
	o := &operatorLab{l: l, a: l.AddNode("a"), b: l.AddNode("b"), ctl: testbin.Build(t, "overlayctl")}
	nodes := []*lab.Node{o.a, o.b}
	o.st = setupGlobal(t, nodes)
	meshPeers(t, nodes, o.st, nil)
	for _, n := range nodes {
		n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	}
	o.c = l.AddContainer("c1")
	o.cIP = o.a.Call(protocol.AttachContainer{Handle: o.c.Handle(), Service: "web"}).(protocol.Attached).IP
	o.a.Call(protocol.RegisterDNS{Name: "web", IP: o.cIP})
	mustPing(t, "node a", o.a.Ping, o.st[1].NodeIP)
	lab.Eventually(t, 15*time.Second, "node a's health monitor judges its peer", func() error {
		if ps := o.a.Status().Peers; len(ps) != 1 || ps[0].Healthy == nil || !*ps[0].Healthy {
			return errf("peers %+v", ps)
		}
		return nil
	})
	return o
}

// ctlOn runs overlayctl inside node n (its network and mount namespace)
// and returns its output and whether it exited 0.
func (o *operatorLab) ctlOn(n *lab.Node, args ...string) (string, error) {
	return n.Exec(append([]string{o.ctl, "--socket", n.Socket}, args...)...)
}

func (o *operatorLab) mustCtl(t *testing.T, n *lab.Node, args ...string) string {
	t.Helper()
	out, err := o.ctlOn(n, args...)
	if err != nil {
		t.Fatalf("overlayctl %s on node %s: %v\n%s", strings.Join(args, " "), n.Name, err, out)
	}
	return out
}

// The lists show the peer's key, the service, the container's PID and the
// registered address, each as a table and as JSON.
func TestOverlayctlListsPeersServicesContainersAndNames(t *testing.T) {
	o := newOperatorLab(t)
	pid := strconv.Itoa(o.c.PID)
	for _, c := range []struct {
		cmd  string
		want []string
	}{
		{"peers", []string{o.st[1].PublicKey, "ago", "healthy"}},
		{"services", []string{"web", o.a.Status().Services[0].Bridge}},
		{"containers", []string{pid, "linux_pid", o.cIP.String()}},
		{"dns", []string{"web.", o.cIP.String()}},
	} {
		out := o.mustCtl(t, o.a, c.cmd)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("overlayctl %s lacks %q:\n%s", c.cmd, w, out)
			}
		}
		js := o.mustCtl(t, o.a, c.cmd, "--json")
		var v any
		if err := json.Unmarshal([]byte(js), &v); err != nil {
			t.Errorf("overlayctl %s --json is not JSON: %v\n%s", c.cmd, err, js)
		}
		if !strings.Contains(js, c.want[0]) {
			t.Errorf("overlayctl %s --json lacks %q:\n%s", c.cmd, c.want[0], js)
		}
	}
}

// doctor passes on the healthy node, and fails naming the FORWARD policy
// once the node's iptables drops forwarded traffic by default, as Docker
// makes it.
func TestDoctorFindsAForwardPolicyOfDrop(t *testing.T) {
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables (apt-get install iptables)")
	}
	o := newOperatorLab(t)
	out, err := o.ctlOn(o.a, "doctor")
	if err != nil {
		t.Fatalf("doctor fails on a healthy node: %v\n%s", err, out)
	}
	t.Logf("doctor on the healthy node:\n%s", out)
	o.a.MustExec("iptables", "-P", "FORWARD", "DROP")
	out, err = o.ctlOn(o.a, "doctor")
	t.Logf("doctor after iptables -P FORWARD DROP:\n%s", out)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("doctor exits 0 with FORWARD dropping: %v\n%s", err, out)
	}
	if !strings.Contains(out, "FAIL") || !strings.Contains(out, "chain FORWARD") || !strings.Contains(out, "policy DROP") ||
		!strings.Contains(out, "iptables -I FORWARD -i zl-+ -j ACCEPT") {
		t.Fatalf("doctor does not name the FORWARD policy and the fix:\n%s", out)
	}
	// The JSON report says the same, for scripts.
	js, _ := o.ctlOn(o.a, "doctor", "--json")
	if !strings.Contains(js, `"check": "firewall"`) || !strings.Contains(js, `"status": "fail"`) {
		t.Fatalf("doctor --json:\n%s", js)
	}
	// Read-only: the doctor changed nothing.
	if pol := o.a.MustExec("iptables", "-S", "FORWARD"); !strings.Contains(pol, "-P FORWARD DROP") {
		t.Fatalf("the FORWARD policy changed under the doctor:\n%s", pol)
	}
	// The fix it gives, applied as given, satisfies it.
	o.a.MustExec("iptables", "-I", "FORWARD", "-i", "zl-+", "-j", "ACCEPT")
	o.a.MustExec("iptables", "-I", "FORWARD", "-o", "zl-+", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	if out, err := o.ctlOn(o.a, "doctor"); err != nil {
		t.Fatalf("doctor still fails after its fix: %v\n%s", err, out)
	}
}

// A backup taken while the daemon serves is a private file, and the
// daemon restarted on a data directory holding it (stop, copy, start)
// lists the peers it had then — not one added after — and reaches its
// peer again. Odd places are refused.
func TestBackupWhileServingRestoresTheSamePeers(t *testing.T) {
	o := newOperatorLab(t)
	dir := filepath.Join(o.l.Dir(), "backups")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "overlayd.db")
	out := o.mustCtl(t, o.a, "backup", file)
	if !strings.Contains(out, file) {
		t.Fatalf("backup printed %q", out)
	}
	info, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 || info.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("backup has mode %04o uid %d, want 0600 root", info.Mode().Perm(), info.Sys().(*syscall.Stat_t).Uid)
	}
	if out, err := o.ctlOn(o.a, "backup", filepath.Join(os.TempDir(), "zlayer-backup-"+o.l.ID+".db")); err == nil || !strings.Contains(out, "other users can write") {
		t.Fatalf("a backup into %s was not refused: %v\n%s", os.TempDir(), err, out)
	}
	o.mustCtl(t, o.a, "status") // still serving

	keys := func(n *lab.Node) []string {
		var peers []struct {
			PublicKey string `json:"public_key"`
		}
		if err := json.Unmarshal([]byte(o.mustCtl(t, n, "peers", "--json")), &peers); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range peers {
			out = append(out, p.PublicKey)
		}
		sort.Strings(out)
		return out
	}
	want := keys(o.a)
	// A peer added after the backup is not in it.
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	later := k.PublicKey().String()
	o.a.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: later, Endpoint: "172.31.0.200:51820", AllowedIPs: "10.200.9.0/24"}})
	if got := keys(o.a); len(got) != len(want)+1 {
		t.Fatalf("the later peer is not listed: %v", got)
	}

	// Restore, as docs/operations.md says: stop, copy, start.
	o.a.Stop()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(o.a.DataDir, "overlayd.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	o.a.Start()
	c := o.a
	got := keys(c)
	if len(want) == 0 || strings.Join(want, ",") != strings.Join(got, ",") {
		t.Fatalf("restored daemon lists peers %v, the backed-up one %v", got, want)
	}
	mustPing(t, "restored node a", c.Ping, o.st[1].NodeIP)
	if c.Status().PublicKey != o.st[0].PublicKey {
		t.Fatalf("restored daemon has key %s, want node a's %s", c.Status().PublicKey, o.st[0].PublicKey)
	}
}

// /metrics serves the runtime, the process, the build, per-peer traffic
// labelled with the peer's key, and the reconcile histogram.
func TestMetricsEndpoint(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl (apt-get install curl)")
	}
	o := newOperatorLab(t)
	body := o.a.MustExec("curl", "-sf", "http://"+metricsAddr+"/metrics")
	for _, want := range []string{
		"\ngo_goroutines ",
		"\nprocess_resident_memory_bytes ",
		"\nzlayer_overlayd_build_info{",
		`zlayer_overlayd_peer_receive_bytes_total{public_key="` + o.st[1].PublicKey + `",scope="global"} `,
		"\nzlayer_overlayd_reconcile_duration_seconds_bucket{le=",
		`zlayer_overlayd_requests_total{op="attach_container"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
	var rx float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, `zlayer_overlayd_peer_receive_bytes_total{public_key="`+o.st[1].PublicKey) {
			f := strings.Fields(line)
			rx, _ = strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	if rx <= 0 {
		t.Errorf("peer %s received %v bytes after a ping", o.st[1].PublicKey, rx)
	}
}
