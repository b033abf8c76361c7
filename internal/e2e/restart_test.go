//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
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
	time.Sleep(300 * time.Millisecond)
	done := make(chan string, 1)
	go func() {
		// Longer than Exec's 30 s limit.
		out, _ := exec.Command("ip", "netns", "exec", b.NS, "iperf3", "-c", st[0].NodeIP.String(),
			"-b", "20M", "-t", "40", "-i", "1", "--json").Output()
		done <- string(out)
	}()
	for i := range 5 {
		time.Sleep(6 * time.Second)
		if i%2 == 0 {
			a.Kill()
		} else {
			a.Stop()
		}
		a.Start()
	}
	out := <-done
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
	t.Logf("second:Mbit/s/retransmits, a restart about every 7 s from the 6th:%s", series.String())
	// The data plane process does not notice the daemon restarting, so
	// the stream loses nothing there, and a lost segment shows as a
	// retransmission. A data plane inside the daemon, rebuilt at every
	// start, costs about 97 of them a restart here, and the rate of every
	// second stays at 20 Mbit/s all the same: TCP recovers within the
	// second, so a floor on the rate, what this test judged until
	// 2026-12-07, cannot tell the two apart. The allowance is for the
	// emulated guests, where TCP resent one segment in some runs, each
	// time in a second with no restart near it (once the very first).
	const allowed = 10
	lost := 0
	for _, iv := range res.Intervals {
		lost += iv.Sum.Retransmits
	}
	if lost > allowed {
		t.Fatalf("the stream retransmitted %d segments across the restarts (at most %d allowed): the tunnel lost packets", lost, allowed)
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
