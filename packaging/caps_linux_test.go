package packaging

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

func requireRoot(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the daemon in a network namespace with the unit's capabilities")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s, which is not installed", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v", err)
	}
}

func randHex(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func netnsAdd(t *testing.T, name string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// outcome is what a node did with a given capability set.
type outcome struct {
	global, service, attach string // the err message of each request; "" when it succeeded
	log                     string
	exit                    error
}

// runNode starts the daemon in a network namespace of its own as root
// restricted to caps (what systemd does with CapabilityBoundingSet), sets
// up the global overlay and a service, attaches a root process in a
// container namespace with join_global, and stops the daemon with SIGTERM.
func runNode(t *testing.T, bin string, caps []string) outcome {
	t.Helper()
	r := randHex(t)
	node, ctr := "zlpf-n-"+r, "zlpf-c-"+r
	netnsAdd(t, node)
	netnsAdd(t, ctr)

	// The "container": a root process with every capability, as a root
	// container's init has more than the daemon.
	sleeper := exec.Command("ip", "netns", "exec", ctr, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })

	var set []string
	for _, c := range caps {
		set = append(set, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	bounding := "-all"
	if len(set) > 0 {
		bounding += "," + strings.Join(set, ",")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "ctl.sock")
	var logs syncBuffer
	d := exec.Command("ip", "netns", "exec", node, "setpriv", "--bounding-set="+bounding, "--inh-caps=-all", "--",
		bin, "--data-dir", dir, "--socket", sock, "--dns-port", "0", "--log-level", "debug")
	d.Stderr = &logs
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.Wait() }()
	t.Cleanup(func() {
		d.Process.Kill()
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatalf("daemon did not come up: %v\n%s", err, logs.String())
	}
	defer c.Close()
	call := func(req string) string {
		resp, err := c.DoRaw(ctx, []byte(req))
		if err != nil {
			t.Fatalf("%s: %v\n%s", req, err, logs.String())
		}
		if e, ok := resp.(protocol.Err); ok {
			return e.Message
		}
		return ""
	}
	var o outcome
	o.global = call(`{"op":"setup_global_overlay","deployment":"zlpf` + r + `","instance_id":"1","cluster_cidr":"10.233.0.0/16","slice_cidr":"10.233.1.0/28","wg_port":51820,"nat_enabled":false}`)
	o.service = call(`{"op":"setup_service_overlay","service":"web","mode":"shared"}`)
	o.attach = call(fmt.Sprintf(`{"op":"attach_container","handle":{"platform":"linux_pid","pid":%d},"service":"web","join_global":true}`, sleeper.Process.Pid))
	c.Close()

	d.Process.Signal(syscall.SIGTERM)
	select {
	case o.exit = <-exited:
		exited <- o.exit
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not stop on SIGTERM\n%s", logs.String())
	}
	o.log = logs.String()
	return o
}

// TestUnitCapabilitiesAreEnoughAndEachIsNeeded runs a node with exactly the
// unit's capability bounding set, then once without each capability.
func TestUnitCapabilitiesAreEnoughAndEachIsNeeded(t *testing.T) {
	requireRoot(t, "ip", "setpriv")
	u, _ := parseUnit(t, unitPath)
	caps := unitCaps(u)
	bin := testbin.Build(t, "zlayer-overlayd")

	t.Run("unit set", func(t *testing.T) {
		o := runNode(t, bin, caps)
		if o.global != "" || o.service != "" || o.attach != "" {
			t.Fatalf("with the unit's capabilities: global %q, service %q, attach %q\n%s", o.global, o.service, o.attach, o.log)
		}
		for _, bad := range []string{"permission denied", "operation not permitted"} {
			if strings.Contains(o.log, bad) {
				t.Errorf("the log reports %q with the unit's capabilities:\n%s", bad, o.log)
			}
		}
		if o.exit != nil {
			t.Errorf("SIGTERM: exit %v, want a clean exit\n%s", o.exit, o.log)
		}
	})

	// What breaks without each capability: the unit grants nothing it
	// does not need.
	broken := map[string]func(o outcome) bool{
		"CAP_NET_ADMIN":        func(o outcome) bool { return o.global != "" },
		"CAP_SYS_ADMIN":        func(o outcome) bool { return strings.Contains(o.attach, "not permitted") },
		"CAP_SYS_PTRACE":       func(o outcome) bool { return strings.Contains(o.attach, "/ns/net: permission denied") },
		"CAP_NET_BIND_SERVICE": func(o outcome) bool { return strings.Contains(o.log, ":53: bind: permission denied") },
		"CAP_CHOWN":            func(o outcome) bool { return strings.Contains(o.log, "cannot give the socket to group zlayer") },
	}
	for _, drop := range caps {
		t.Run("without "+drop, func(t *testing.T) {
			check, ok := broken[drop]
			if !ok {
				t.Fatalf("the unit grants %s, which this test does not know the use of: add it here, with what breaks without it", drop)
			}
			if drop == "CAP_CHOWN" {
				if _, err := user.LookupGroup("zlayer"); err != nil {
					t.Skip("CAP_CHOWN is used only to give the socket to group zlayer, which does not exist here")
				}
			}
			var rest []string
			for _, c := range caps {
				if c != drop {
					rest = append(rest, c)
				}
			}
			o := runNode(t, bin, rest)
			if !check(o) {
				t.Errorf("nothing broke without %s: global %q, service %q, attach %q\n%s", drop, o.global, o.service, o.attach, o.log)
			}
		})
	}
}
