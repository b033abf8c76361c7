//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Restarts of the daemon lose nothing with the userspace backend either:
// each device's data plane runs in a process of its own, which the next
// daemon adopts with its sessions.

// dataplanePID is the process serving node n's global device.
func dataplanePID(t *testing.T, n *lab.Node) int {
	t.Helper()
	out := n.MustExec("ip", "netns", "pids", n.NS)
	for _, f := range strings.Fields(out) {
		pid, _ := strconv.Atoi(f)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), "wg-dataplane") && strings.Contains(string(cmdline), "zl-prod-g") {
			return pid
		}
	}
	return 0
}

func TestUserspaceRestartsLoseNoPacket(t *testing.T) {
	l := newLab(t, "--wireguard", "userspace")
	nodes := []*lab.Node{l.AddNode("a"), l.AddNode("b")}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	a, b := nodes[0], nodes[1]
	mustPing(t, "b", b.Ping, st[0].NodeIP)
	pid := dataplanePID(t, a)
	if pid == 0 {
		t.Fatalf("no data plane process serves a's device:\n%s", a.MustExec("ps", "-ef"))
	}
	handshake := youngSession(t, a, globalDev, st[1].PublicKey, func() { b.Ping(st[0].NodeIP, 1) })

	for _, restart := range []struct {
		name string
		do   func()
	}{{"SIGKILL", func() { a.Kill(); a.Start() }}, {"SIGTERM", func() { a.Stop(); a.Start() }}} {
		pinged := make(chan string, 1)
		go func() {
			out, _ := b.Exec("ping", "-c", "250", "-i", "0.02", "-W", "2", "-n", "-q", st[0].NodeIP.String())
			pinged <- out
		}()
		time.Sleep(time.Second) // well into the pings
		restart.do()
		if out := <-pinged; !strings.Contains(out, "250 packets transmitted, 250 received") {
			t.Fatalf("250 pings at 50/s across a %s and start of a's daemon:\n%s", restart.name, out)
		}
		if got := dataplanePID(t, a); got != pid {
			t.Fatalf("after a %s the data plane is process %d, was %d: it was recreated, not adopted", restart.name, got, pid)
		}
	}
	if got := wgDump(t, a, globalDev).Peers[st[1].PublicKey].Handshake; got != handshake {
		t.Fatalf("the session was renewed across the restarts (handshake %d, was %d)", got, handshake)
	}
	// Torn down, the data plane goes with the device.
	a.Call(protocol.TeardownGlobalOverlay{})
	lab.Eventually(t, 10*time.Second, "the data plane ended", func() error {
		if p := dataplanePID(t, a); p != 0 {
			return fmt.Errorf("process %d still runs", p)
		}
		return nil
	})
}

// A data plane whose daemon will never come back (its data directory is
// gone) does not linger.
func TestOrphanDataplaneEnds(t *testing.T) {
	l := newLab(t, "--wireguard", "userspace")
	a := l.AddNode("a")
	setupGlobal(t, []*lab.Node{a})
	if dataplanePID(t, a) == 0 {
		t.Fatal("no data plane")
	}
	a.Kill()
	if err := os.RemoveAll(a.DataDir); err != nil {
		t.Fatal(err)
	}
	lab.Eventually(t, 15*time.Second, "the orphaned data plane ended", func() error {
		if p := dataplanePID(t, a); p != 0 {
			return fmt.Errorf("process %d still runs", p)
		}
		if out, _ := a.Exec("ip", "link", "show", "zl-prod-g"); !strings.Contains(out, "does not exist") {
			return fmt.Errorf("its link is still there: %s", out)
		}
		return nil
	})
}

// A TCP stream at 20 Mbit/s for 40 s across five restarts of the daemon
// completes without losing a segment.
func TestTCPStreamThroughRestarts(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3")
	}
	l := newLab(t, "--wireguard", "userspace")
	nodes := []*lab.Node{l.AddNode("a"), l.AddNode("b")}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	a, b := nodes[0], nodes[1]
	mustPing(t, "b", b.Ping, st[0].NodeIP)
	srv := exec.Command("ip", "netns", "exec", a.NS, "iperf3", "-s", "-1", "-B", st[0].NodeIP.String())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	waitTCPListen(t, a, 5201)
	dropsBefore := [2]map[string]uint64{dropCounts(t, a), dropCounts(t, b)}
	resentBefore := resentSegments(t, b)
	start := time.Now()
	done := make(chan string, 1)
	go func() {
		// Longer than Exec's 30 s limit.
		out, _ := exec.Command("ip", "netns", "exec", b.NS, "iperf3", "-c", st[0].NodeIP.String(),
			"-b", "20M", "-t", "40", "-i", "1", "--json").Output()
		done <- string(out)
	}()
	var restarts strings.Builder
	for i := range 5 {
		time.Sleep(6 * time.Second)
		fmt.Fprintf(&restarts, " %.1f", time.Since(start).Seconds())
		if i%2 == 0 {
			a.Kill()
		} else {
			a.Stop()
		}
		a.Start()
		fmt.Fprintf(&restarts, "-%.1f", time.Since(start).Seconds())
	}
	out := <-done
	// Where the kernel dropped packets on the way, so that a failure says
	// whether a queue overflowed (a stalled reader) or the tunnel broke.
	var drops strings.Builder
	dropped := [2]map[string]int64{{}, {}}
	for i, n := range []*lab.Node{a, b} {
		after := dropCounts(t, n)
		for _, k := range slices.Sorted(maps.Keys(after)) {
			if d := int64(after[k]) - int64(dropsBefore[i][k]); d != 0 {
				dropped[i][k] = d
				fmt.Fprintf(&drops, " %s %s +%d;", n.Name, k, d)
			}
		}
	}
	if drops.Len() == 0 {
		drops.WriteString(" none")
	}
	t.Logf("restarts (s after the stream began, stop-ready):%s; kernel drops:%s", restarts.String(), drops.String())
	var res struct {
		Intervals []struct {
			Sum struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Retransmits   int     `json:"retransmits"`
			} `json:"sum"`
		} `json:"intervals"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Error != "" || len(res.Intervals) < 39 {
		t.Fatalf("iperf3 did not complete (%v, %q):\n%s", err, res.Error, out)
	}
	// Every second's rate and retransmissions, so a slow second can be
	// told apart from a lost one.
	var series strings.Builder
	for i, iv := range res.Intervals {
		fmt.Fprintf(&series, " %d:%.1f/%d", i+1, iv.Sum.BitsPerSecond/1e6, iv.Sum.Retransmits)
	}
	t.Logf("second:Mbit/s/retransmits:%s", series.String())
	// The data plane process does not notice the daemon restarting, so
	// the stream loses nothing there. A data plane inside the daemon,
	// rebuilt at every start, loses about 97 segments a restart here, and
	// the rate of every second stays at 20 Mbit/s all the same: TCP
	// recovers within the second, so a floor on the rate, what this test
	// judged until 2026-12-07, cannot tell the two apart.
	//
	// Nor can the count of retransmissions alone. In an emulated guest a
	// stall of the virtual CPU makes TCP resend segments that were only
	// late; each reaches the receiver twice, and the receiver says so with
	// a D-SACK. So what was resent and not reported back as a duplicate is
	// what was lost. The allowance is for D-SACKs that are themselves lost.
	const allowed = 10
	resentAfter := resentSegments(t, b)
	resent, dup := resentAfter.resent-resentBefore.resent, resentAfter.duplicates-resentBefore.duplicates
	lost := int64(resent) - int64(dup)
	t.Logf("the sender resent %d segments; the receiver reported %d of them as duplicates", resent, dup)
	// A loss the restarts cannot have caused: b's own TUN queue (500
	// packets) overflowing because b's data plane, whose daemon never
	// restarts, did not read it for a while. The guests did that in 2 of
	// 15 runs (60 packets and 118 segments on 6.12, 183 and 364 on 6.1),
	// 1 to 4 s after a restart of a had finished, with nothing dropped at
	// a; no run on the host has. Each dropped packet holds at most one
	// GSO super-packet of segments.
	const segmentsPerGSOPacket = 48 // 64 KiB over a 1,368-byte MSS
	stalled := dropped[1][globalDev+" tx dropped"]
	switch {
	case lost <= allowed:
	case stalled > 0 && len(dropped[0]) == 0 && lost <= allowed+stalled*segmentsPerGSOPacket:
		t.Logf("the %d segments lost were dropped by b's TUN queue (%d packets): b's data plane, which no restart touches, fell behind reading it", lost, stalled)
	default:
		t.Fatalf("the stream lost %d segments across the restarts (at most %d allowed): %d resent, %d of them duplicates; kernel drops:%s", lost, allowed, resent, dup, drops.String())
	}
	// A slow second without a loss is the machine, not the tunnel: in an
	// emulated guest the rate of a second swings between 1 and 31 Mbit/s
	// with no retransmission at all.
	for i, iv := range res.Intervals {
		if iv.Sum.BitsPerSecond < 2e6 {
			t.Logf("second %d carried %.1f Mbit/s, with nothing lost", i+1, iv.Sum.BitsPerSecond/1e6)
		}
	}
}

// tcpResends counts a node's TCP segments sent again, over all its connections.
type tcpResends struct {
	resent     uint64 // RetransSegs
	duplicates uint64 // of them, reported received twice with a D-SACK (TCPDSACKRecvSegs)
}

func resentSegments(t *testing.T, n *lab.Node) tcpResends {
	t.Helper()
	tcp := snmpCounters(n.MustExec("cat", "/proc/net/snmp"), "Tcp")
	ext := snmpCounters(n.MustExec("cat", "/proc/net/netstat"), "TcpExt")
	dup, ok := ext["TCPDSACKRecvSegs"]
	if !ok {
		t.Skip("the kernel does not count D-SACKed segments (no TCPDSACKRecvSegs in /proc/net/netstat)")
	}
	return tcpResends{resent: tcp["RetransSegs"], duplicates: dup}
}

// dropCounts are node n's kernel counters of dropped packets: those of
// its UDP sockets, and the receive and transmit drops of its links and
// their queueing disciplines, keyed by where they were counted.
func dropCounts(t *testing.T, n *lab.Node) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	udp := snmpCounters(n.MustExec("cat", "/proc/net/snmp"), "Udp")
	for _, k := range []string{"InErrors", "RcvbufErrors", "SndbufErrors", "NoPorts"} {
		out["udp "+k] = udp[k]
	}
	var links []struct {
		Name    string `json:"ifname"`
		Stats64 struct {
			RX struct {
				Dropped uint64 `json:"dropped"`
			} `json:"rx"`
			TX struct {
				Dropped uint64 `json:"dropped"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(n.MustExec("ip", "-j", "-s", "link", "show")), &links); err != nil {
		t.Fatalf("node %s: ip -j -s link show: %v", n.Name, err)
	}
	for _, l := range links {
		out[l.Name+" rx dropped"] = l.Stats64.RX.Dropped
		out[l.Name+" tx dropped"] = l.Stats64.TX.Dropped
	}
	var qdiscs []struct {
		Dev   string `json:"dev"`
		Kind  string `json:"kind"`
		Drops uint64 `json:"drops"`
	}
	// Only a diagnosis: without iproute2's tc (busybox's has no -j) the
	// queueing disciplines go uncounted.
	tc, err := n.Exec("tc", "-j", "-s", "qdisc", "show")
	if err == nil {
		err = json.Unmarshal([]byte(tc), &qdiscs)
	}
	if err != nil {
		t.Logf("node %s: qdisc drops not counted: tc -j -s qdisc show: %v", n.Name, err)
	}
	for _, q := range qdiscs {
		out[q.Dev+" "+q.Kind+" drops"] += q.Drops
	}
	return out
}

// execer runs a command in a namespace: a lab node or container.
type execer interface {
	Exec(args ...string) (string, error)
}

// waitTCPListen returns once a TCP socket in the namespace of n (a node
// or a container) listens on port: the clients of these tests have one
// try, and a server started a moment ago may not listen yet in the
// emulated guest.
func waitTCPListen(t *testing.T, n execer, port int) {
	t.Helper()
	want := fmt.Sprintf(":%04X", port)
	lab.Eventually(t, 30*time.Second, fmt.Sprintf("a listener on TCP port %d", port), func() error {
		out, err := n.Exec("cat", "/proc/net/tcp", "/proc/net/tcp6")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			// sl local_address rem_address st ...; st 0A is LISTEN.
			if f := strings.Fields(line); len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
				return nil
			}
		}
		return fmt.Errorf("none yet")
	})
}
