package wg

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/zlayer/zlayer-overlayd/internal/lab/nstest"
)

const dataplaneEnv = "ZLTW_WG_DATAPLANE"

// dataplaneGateEnv names a file the data plane helper waits for before it
// starts.
const dataplaneGateEnv = "ZLTW_WG_DATAPLANE_GATE"

// dataplaneLabelledGateEnv names a file the data plane helper waits for
// once its link exists and is labelled, before it asks whether the daemon
// that started it still lives.
const dataplaneLabelledGateEnv = "ZLTW_WG_DATAPLANE_LABELLED_GATE"

// waitForFile returns once path exists.
func waitForFile(path string) {
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHelperDataplane is not a test: it is the data plane process the
// detached backend starts when a node process opens a device with it.
func TestHelperDataplane(t *testing.T) {
	if os.Getenv(dataplaneEnv) != "1" {
		t.Skip("data plane process for the detached-backend tests; runs only when they start it")
	}
	if gate := os.Getenv(dataplaneGateEnv); gate != "" {
		// Held until the test has done what must happen before the data
		// plane opens its device.
		waitForFile(gate)
	}
	if gate := os.Getenv(dataplaneLabelledGateEnv); gate != "" {
		beforeStarterCheck = func() { waitForFile(gate) }
	}
	os.Exit(RunDataplane(flag.Args(), os.Stderr))
}

// testDataplaneBackend runs data planes as this test binary's
// TestHelperDataplane, with env added to their environment.
func testDataplaneBackend(logDir string, env []string, log *slog.Logger) (Backend, error) {
	return NewDataplaneBackend(DataplaneConfig{
		Command: []string{os.Args[0], "-test.run=^TestHelperDataplane$", "-test.count=1", "--"},
		Env:     append([]string{dataplaneEnv + "=1"}, env...),
		LogDir:  logDir,
		Logger:  log,
	})
}

// killDataplanes ends every process left in ns (a data plane outlives the
// node process that started it, by design) before the namespace goes, and
// removes the UAPI sockets of devs, which a SIGKILLed data plane leaves.
func killDataplanes(ns string, devs ...string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			exec.Command("kill", "-9", strconv.Itoa(pid)).Run()
		}
	}
	for _, dev := range devs {
		os.Remove(uapiSocketPath(dev))
	}
}

// dataplanePIDIn is the pid of a data plane process running in ns, or 0.
func dataplanePIDIn(ns string) int {
	if pids := dataplanePIDsIn(ns); len(pids) > 0 {
		return pids[0]
	}
	return 0
}

// dataplanePIDsIn lists the data plane processes running in ns. An exited
// one is not among them even before it is reaped (a zombie has no network
// namespace), which matters where its parent died and init may not reap.
func dataplanePIDsIn(ns string) []int {
	var pids []int
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		cmdline, _ := os.ReadFile("/proc/" + f + "/cmdline")
		if strings.Contains(string(cmdline), "TestHelperDataplane") {
			pid, _ := strconv.Atoi(f)
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitNoDataplane fails the test with why unless the data plane in ns is
// gone within 10 s.
func waitNoDataplane(t *testing.T, ns, why string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for dataplanePIDIn(ns) != 0 {
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dataplaneNetns creates a namespace for a data plane device; both names
// end in tag, and whatever data plane runs there when the test ends is
// killed.
func dataplaneNetns(t *testing.T, tag string) (ns, dev string) {
	t.Helper()
	r := randHex(t, 6)
	ns, dev = "zltw-"+r+"-"+tag, "zltw"+r+tag
	newNetns(t, ns)
	t.Cleanup(func() { killDataplanes(ns, dev) })
	return ns, dev
}

// openDataplane starts a node process in a namespace of its own and opens
// a data plane device there, its process given env; both names end in tag.
func openDataplane(t *testing.T, tag string, env ...string) (n *node, ns, dev string) {
	t.Helper()
	ns, dev = dataplaneNetns(t, tag)
	n = startNode(t, ns)
	n.must(nodeRequest{Op: "open", Name: dev, Dataplane: true, LogDir: t.TempDir(), DataplaneEnv: env})
	return n, ns, dev
}

// A daemon run at debug gets wireguard-go's own log from its data plane
// (here the line for bringing the device up); one run at info gets no
// debug lines from it.
func TestDataplaneLogsAtTheOpenersLevel(t *testing.T) {
	requireRoot(t)
	for _, debug := range []bool{true, false} {
		ns, dev := dataplaneNetns(t, "l")
		logDir := t.TempDir()
		n := startNode(t, ns)
		n.must(nodeRequest{Op: "open", Name: dev, Dataplane: true, LogDir: logDir, Debug: debug})
		n.must(nodeRequest{Op: "close"})
		waitNoDataplane(t, ns, "the data plane did not end after Close")
		raw, err := os.ReadFile(filepath.Join(logDir, "dataplane-"+dev+".log"))
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Contains(string(raw), "level=DEBUG msg=wireguard-go")
		if got != debug {
			t.Fatalf("opener at debug %v, data plane logged wireguard-go's debug lines %v:\n%s", debug, got, raw)
		}
	}
}

// A device opened with the detached backend keeps carrying packets and
// its session when the process that opened it dies; the next opener adopts
// it, reads it back exactly as the in-process backend would, configures
// it, and ends it with Close.
func TestDataplaneOutlivesItsOpener(t *testing.T) {
	requireRoot(t, "ping", "wg")
	r := randHex(t, 6)
	nsA, nsB := "zltw-"+r+"-a", "zltw-"+r+"-b"
	newNetns(t, nsA)
	newNetns(t, nsB)
	devA, devB := "zltw"+r+"a", "zltw"+r+"b"
	t.Cleanup(func() { killDataplanes(nsA, devA) })
	vethA, vethB := "zltw"+r+"va", "zltw"+r+"vb"
	run(t, "ip", "link", "add", vethA, "netns", nsA, "type", "veth", "peer", "name", vethB, "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", "10.201.0.1/24", "dev", vethA)
	run(t, "ip", "-n", nsB, "addr", "add", "10.201.0.2/24", "dev", vethB)
	run(t, "ip", "-n", nsA, "link", "set", vethA, "up")
	run(t, "ip", "-n", nsB, "link", "set", vethB, "up")
	keyA, _ := GenerateKey()
	keyB, _ := GenerateKey()
	logDir := t.TempDir()

	openA := func() *node {
		n := startNode(t, nsA)
		n.must(nodeRequest{Op: "open", Name: devA, Dataplane: true, LogDir: logDir})
		n.dev = devA
		return n
	}
	a := openA()
	b := startNode(t, nsB)
	b.open(devB)
	for _, side := range []struct {
		n              *node
		key, peer      wgtypes.Key
		endpoint, addr string
		allowed        string
	}{
		{a, keyA, keyB.PublicKey(), "10.201.0.2", "10.202.0.1/24", "10.202.0.2/32"},
		{b, keyB, keyA.PublicKey(), "10.201.0.1", "10.202.0.2/24", "10.202.0.1/32"},
	} {
		side.n.configure(wgtypes.Config{
			PrivateKey: &side.key,
			ListenPort: new(wgPort),
			Peers: []wgtypes.PeerConfig{{
				PublicKey:  side.peer,
				Endpoint:   mustUDPAddr(t, side.endpoint+":51820"),
				AllowedIPs: []net.IPNet{mustCIDR(t, side.allowed)},
			}},
		})
		side.n.must(nodeRequest{Op: "addr", CIDR: side.addr})
	}
	if err := ping(nsB, "10.202.0.1"); err != nil {
		t.Fatal(err)
	}
	pid := dataplanePIDIn(nsA)
	if pid == 0 {
		t.Fatal("no data plane process runs in a's namespace")
	}
	link, err := linkIn(nsA, devA)
	if err != nil || link.Alias != testOwner+kernelLabel+devA {
		t.Fatalf("data plane link: %+v, %v; want it labelled %q", link, err, testOwner+kernelLabel+devA)
	}
	before := a.peer(keyB.PublicKey())

	// The opener dies without closing anything: pings keep arriving.
	pinged := make(chan string, 1)
	go func() {
		out, _ := exec.Command("ip", "netns", "exec", nsB, "ping", "-c", "100", "-i", "0.02", "-W", "2", "-n", "-q", "10.202.0.1").CombinedOutput()
		pinged <- string(out)
	}()
	time.Sleep(500 * time.Millisecond)
	a.CallUntilExit("crash", nodeRequest{Op: "crash"}, 10*time.Second)
	a = openA()
	if out := <-pinged; !strings.Contains(out, "100 packets transmitted, 100 received") {
		t.Fatalf("100 pings across the opener's death and a new opener:\n%s", out)
	}
	if got := dataplanePIDIn(nsA); got != pid {
		t.Fatalf("data plane process %d after the new open, was %d: recreated, not adopted", got, pid)
	}
	after := a.peer(keyB.PublicKey())
	// Same session, and read back as the in-process device reads it: a
	// plain IPv4 endpoint, not an IPv4-mapped IPv6 one.
	if !after.LastHandshakeTime.Equal(before.LastHandshakeTime) {
		t.Errorf("handshake %v after adoption, was %v: the session was renewed", after.LastHandshakeTime, before.LastHandshakeTime)
	}
	if after.Endpoint.String() != "10.201.0.2:51820" || after.ReceiveBytes < before.ReceiveBytes {
		t.Errorf("adopted peer: endpoint %v rx %d (was %d)", after.Endpoint, after.ReceiveBytes, before.ReceiveBytes)
	}

	// Configuring the adopted device works, and wg(8) sees it.
	a.configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: keyB.PublicKey(), UpdateOnly: true, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{mustCIDR(t, "10.202.0.2/32"), mustCIDR(t, "10.203.0.0/16")},
	}}})
	if show := run(t, "ip", "netns", "exec", nsA, "wg", "show", devA, "allowed-ips"); !strings.Contains(show, "10.203.0.0/16") {
		t.Errorf("wg show after configuring the adopted device:\n%s", show)
	}
	// Close ends the data plane and its link.
	a.must(nodeRequest{Op: "close"})
	waitNoDataplane(t, nsA, "the data plane still runs after Close")
	if _, err := linkIn(nsA, devA); err == nil {
		t.Error("the data plane's link is still there after Close")
	}
}

// A data plane labelled by another identity is not adopted.
func TestDataplaneOfAnotherOwnerIsRefused(t *testing.T) {
	requireRoot(t)
	n, ns, dev := openDataplane(t, "o")
	run(t, "ip", "-n", ns, "link", "set", dev, "alias", otherOwner+kernelLabel+dev)
	n.CallUntilExit("crash", nodeRequest{Op: "crash"}, 10*time.Second)
	n = startNode(t, ns)
	resp := n.call(nodeRequest{Op: "open", Name: dev, Dataplane: true, LogDir: t.TempDir()})
	if !strings.Contains(resp.Err, "refusing to adopt") || !strings.Contains(resp.Err, otherOwner) {
		t.Fatalf("opening another identity's data plane: %q", resp.Err)
	}
	if dataplanePIDIn(ns) == 0 {
		t.Fatal("the other identity's data plane was stopped")
	}
}

// openDataplaneProcess is openDataplane plus the pid of the data plane
// process it started.
func openDataplaneProcess(t *testing.T, tag string, env ...string) (n *node, ns, dev string, pid int) {
	t.Helper()
	n, ns, dev = openDataplane(t, tag, env...)
	if pid = dataplanePIDIn(ns); pid == 0 {
		t.Fatal("no data plane process after open")
	}
	return n, ns, dev, pid
}

// A data plane killed under the daemon (the OOM killer, an operator's
// kill -9) leaves its UAPI socket; closing the device afterwards must not
// leave it too, or wg show lists a device nobody serves.
func TestDataplaneKilledThenClosedLeavesNoSocket(t *testing.T) {
	requireRoot(t)
	n, ns, dev, pid := openDataplaneProcess(t, "k")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNoDataplane(t, ns, "the data plane survived SIGKILL")
	if _, err := os.Lstat(uapiSocketPath(dev)); err != nil {
		t.Fatalf("SIGKILL was expected to leave the socket (else this test proves nothing): %v", err)
	}
	n.must(nodeRequest{Op: "close"})
	if _, err := os.Lstat(uapiSocketPath(dev)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the dead data plane's socket is still there after Close: %v", err)
	}
}

func linkIn(ns, name string) (*netlink.LinkAttrs, error) {
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show", name).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	attrs := &netlink.LinkAttrs{Name: name}
	if _, rest, ok := strings.Cut(string(out), " alias "); ok {
		attrs.Alias = strings.Fields(rest)[0]
	}
	return attrs, nil
}

func mustUDPAddr(t *testing.T, s string) *net.UDPAddr {
	t.Helper()
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A data plane serves its UAPI socket only once its link carries the
// owner's label. The daemon that starts it can be killed at any moment
// (and the data plane outlives it by design): were there an instant when
// the device answers but is unlabelled, a crash there would leave a TUN
// that reconcile never removes (it removes only labelled links) and that
// the next setup refuses to adopt. So no daemon labels anything here:
// the process is started the way the backend starts it, and the label is
// read the moment the socket first answers.
func TestDataplaneIsLabelledBeforeItServes(t *testing.T) {
	requireRoot(t)
	ns, dev := dataplaneNetns(t, "b")
	b, err := testDataplaneBackend(t.TempDir(), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	dp := b.(*dataplaneBackend).command(dev, Options{MTU: DefaultMTU, Owner: testOwner})
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, dp.Args...)...)
	cmd.Env = dp.Env
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(15 * time.Second)
	for !serving(dev) {
		select {
		case err := <-exited:
			t.Fatalf("the data plane exited before it served (%v):\n%s", err, out.String())
		case <-deadline:
			t.Fatalf("the data plane did not serve within 15 s:\n%s", out.String())
		default:
			time.Sleep(time.Millisecond)
		}
	}
	attrs, err := linkIn(ns, dev)
	if err != nil {
		t.Fatal(err)
	}
	if want := testOwner + kernelLabel + dev; attrs.Alias != want {
		t.Fatalf("the data plane serves while its link is labelled %q, not %q", attrs.Alias, want)
	}
}

// A daemon killed while its data plane is still starting leaves a process
// no request will ever answer for. If that process went on to create and
// serve its device after the next daemon's start-up reconcile had looked,
// the labelled TUN stayed until the start after that (passes in between
// judge no devices: a device's label does not name the request creating
// it). So the data plane serves only if the daemon that started it still
// lives once its labelled link exists; otherwise it ends, taking the link
// with it. Any later daemon then finds nothing or a served labelled link,
// or, in the moment between, a labelled link nothing serves, which it
// waits out (TestDataplaneOfADeadStarterIsWaitedFor).
func TestDataplaneWhoseStarterDiedEnds(t *testing.T) {
	requireRoot(t)
	ns, dev := dataplaneNetns(t, "d")
	gate := filepath.Join(t.TempDir(), "gate")
	n := &node{Helper: nstest.StartHelper(t, ns, helperEnv+"=1", dataplaneGateEnv+"="+gate), t: t, ns: ns}
	logDir := t.TempDir()
	n.Send("open", nodeRequest{Op: "open", Name: dev, Dataplane: true, LogDir: logDir})
	for deadline := time.Now().Add(15 * time.Second); dataplanePIDIn(ns) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the node did not start a data plane")
		}
	}
	// The daemon dies while its data plane has not opened anything yet.
	n.kill()
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitNoDataplane(t, ns, "the data plane of a daemon that died while it started still runs: nothing will adopt it, and reconcile passes do not judge devices")
	if _, err := linkIn(ns, dev); err == nil {
		t.Error("the data plane ended but its link is still there")
	}
	if serving(dev) {
		t.Error("something still serves the device's UAPI socket")
	}
	// It ended for that reason, not for another (a flag it did not know).
	if log, _ := os.ReadFile(filepath.Join(logDir, "dataplane-"+dev+".log")); !strings.Contains(string(log), "died before it was served") {
		t.Errorf("the data plane's log does not say why it ended:\n%s", log)
	}
}

// A daemon that starts while the data plane of one that died has its
// labelled link but neither serves nor has ended yet (it is about to find
// its starter gone) waits for it to end and then starts its own. It
// neither refuses the device as someone else's link nor adopts a link
// that is about to disappear.
func TestDataplaneOfADeadStarterIsWaitedFor(t *testing.T) {
	requireRoot(t)
	ns, dev := dataplaneNetns(t, "w")
	held := filepath.Join(t.TempDir(), "held")
	first := startNode(t, ns)
	first.Send("open", nodeRequest{Op: "open", Name: dev, Dataplane: true, LogDir: t.TempDir(), DataplaneEnv: []string{dataplaneLabelledGateEnv + "=" + held}})
	want := testOwner + kernelLabel + dev
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if attrs, err := linkIn(ns, dev); err == nil && attrs.Alias == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first node's data plane did not create its link labelled %q", want)
		}
	}
	old := dataplanePIDIn(ns)
	first.kill()
	// Released only once the second node is (very likely) already
	// looking at the link; released earlier, the test still holds but
	// proves less.
	release := time.AfterFunc(300*time.Millisecond, func() { os.WriteFile(held, nil, 0o600) })
	defer release.Stop()
	second := startNode(t, ns)
	if resp := second.call(nodeRequest{Op: "open", Name: dev, Dataplane: true, LogDir: t.TempDir()}); resp.Err != "" {
		t.Fatalf("open while a dead daemon's data plane was ending: %s", resp.Err)
	}
	// The old process may take a moment to exit after its link is gone.
	for deadline := time.Now().Add(10 * time.Second); slices.Contains(dataplanePIDsIn(ns), old); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the dead daemon's data plane still runs")
		}
	}
	if pid := dataplanePIDIn(ns); pid == 0 {
		t.Fatal("no data plane serves the device")
	}
	if attrs, err := linkIn(ns, dev); err != nil || attrs.Alias != want {
		t.Fatalf("the new data plane's link: %+v, %v; want it labelled %q", attrs, err, want)
	}
	second.must(nodeRequest{Op: "close"})
	waitNoDataplane(t, ns, "the new data plane still runs after Close")
}
