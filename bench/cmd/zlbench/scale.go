//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/bench/internal/benchlib"
	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// benchScale loads one daemon with 5,000 peers and 1,000 attached
// containers and measures what an operator feels: the time an add_peer
// takes at that size, resident memory, the time a status answer takes,
// and the time from a crash (SIGKILL) to ready again with every device,
// peer, link and route restored. There is no peer tool to compare with;
// the goals are absolute (issue 22).
func benchScale() error {
	n, containers := 5000, 1000
	if *quick {
		n, containers = 500, 100
	}
	dir := benchlib.TempDir()
	ns := benchlib.NetNS("sc")
	// The defaults users get: reconcile and the health monitor run as they
	// would on a node of this size.
	args := []string{"--wireguard", "userspace"}
	if *profile != "" {
		args = append(args, "--pprof-listen", "127.0.0.1:16060")
	}
	d := newDaemon(ns, filepath.Join(dir, "ours"), args...)
	if err := d.start(); err != nil {
		return fmt.Errorf("%v\n%s", err, d.log())
	}
	ctx := context.Background()
	c := client.New(d.sock)
	defer c.Close()
	for _, req := range []protocol.Request{
		protocol.SetupGlobalOverlay{Deployment: "bench", InstanceID: "1", ClusterCIDR: "10.246.0.0/16", SliceCIDR: "10.246.64.0/24", WGPort: 51820},
		protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeShared, Subnet: "10.246.0.0/21"},
	} {
		if _, err := c.Call(ctx, req); err != nil {
			return fmt.Errorf("%s: %v", req.Op(), err)
		}
	}
	start := time.Now()
	var last []float64 // the last tenth of the adds: the cost at this size
	for i := range n {
		k, _ := wgtypes.GeneratePrivateKey()
		// Endpoints on loopback: nothing is sent without traffic or a
		// keepalive, and if it were, it would stay on this host.
		t0 := time.Now()
		_, err := c.Call(ctx, protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey:  k.PublicKey().String(),
			Endpoint:   "127.0.0.1:" + strconv.Itoa(20000+i%40000),
			AllowedIPs: fmt.Sprintf("10.246.%d.%d/32", 128+i/250, i%250+1),
		}})
		if err != nil {
			return fmt.Errorf("add_peer %d: %v", i, err)
		}
		if i >= n-n/10 {
			last = append(last, ms(time.Since(t0)))
		}
	}
	mean := 0.0
	for _, v := range last {
		mean += v
	}
	mean /= float64(len(last))
	fmt.Printf("scale: %d peers added in %v (%.2f ms each; the last %d: mean %.2f ms, p99 %.2f ms)\n", n, time.Since(start).Round(time.Millisecond),
		ms(time.Since(start))/float64(n), len(last), mean, benchlib.Percentile(sorted(last), 99))

	// Containers: processes in a network namespace of their own.
	start = time.Now()
	pids := make([]int, 0, containers)
	for range containers {
		p := benchlib.Start("", "unshare", "--net", "sleep", "3600")
		pids = append(pids, p.Cmd.Process.Pid)
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	for _, pid := range pids {
		for {
			l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
			if err == nil && l != self {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	fmt.Printf("scale: %d container processes started in %v\n", containers, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	for _, pid := range pids {
		if _, err := c.Call(ctx, protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web"}); err != nil {
			return fmt.Errorf("attach %d: %v", pid, err)
		}
	}
	fmt.Printf("scale: %d containers attached in %v (%.2f ms each)\n", containers, time.Since(start).Round(time.Millisecond), ms(time.Since(start))/float64(containers))

	measureStatus := func() (float64, error) {
		var lat []float64
		for range 20 {
			t0 := time.Now()
			st, err := c.Status(ctx)
			if err != nil {
				return 0, err
			}
			lat = append(lat, ms(time.Since(t0)))
			if len(st.Peers) != n || len(st.Attachments) != containers {
				return 0, fmt.Errorf("status shows %d peers and %d attachments, want %d and %d", len(st.Peers), len(st.Attachments), n, containers)
			}
		}
		return benchlib.Summarize(lat).Median, nil
	}
	res, err := benchlib.Interleave(fmt.Sprintf("scale: %d peers + %d attachments (absolute goals)", n, containers), *rounds, []benchlib.Metric{
		{Name: "rss", Unit: "MiB", Better: "lower"},
		{Name: "dataplane_rss", Unit: "MiB", Better: "lower"},
		{Name: "rss_with_dataplane", Unit: "MiB", Better: "lower"},
		{Name: "status", Unit: "ms", Better: "lower"},
		{Name: "restart_to_ready", Unit: "ms", Better: "lower"},
	}, benchlib.Contender{Name: "zlayer-overlayd", Run: func(round int) (map[string]float64, error) {
		if *profile != "" && round == 0 {
			// A profile of the daemon answering status back to back.
			stop := startProfile(ns, 3*time.Second, profilePath("scale-status"))
			for t0 := time.Now(); time.Since(t0) < 3*time.Second; {
				if _, err := c.Status(ctx); err != nil {
					return nil, err
				}
			}
			if err := stop(); err != nil {
				fmt.Fprintln(os.Stderr, "scale: profile:", err)
			}
		}
		rss, err := rssMiB(d.proc.Cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		// The userspace device runs in a data plane process of its own
		// (wireguard-go holding every peer): counted apart, never hidden.
		dpRSS := 0.0
		for _, pid := range dataplanePIDs(ns) {
			r, err := rssMiB(pid)
			if err != nil {
				return nil, err
			}
			dpRSS += r
		}
		status, err := measureStatus()
		if err != nil {
			return nil, err
		}
		d.kill()
		t0 := time.Now()
		if err := d.start(); err != nil {
			return nil, fmt.Errorf("restart: %v\n%s", err, d.log())
		}
		ready := ms(time.Since(t0))
		// Ready means restored: the device is back with every peer, and
		// every container's link is in place.
		if _, err := measureStatus(); err != nil {
			return nil, fmt.Errorf("after restart: %v", err)
		}
		return map[string]float64{"rss": rss, "dataplane_rss": dpRSS, "rss_with_dataplane": rss + dpRSS, "status": status, "restart_to_ready": ready}, nil
	}})
	if err == nil {
		err = wireguardGoAtScale(n, dir)
	}
	if res != nil {
		res.Print(os.Stdout)
		s := func(m string) float64 { return benchlib.Summarize(res.Samples["zlayer-overlayd"][m]).Median }
		// The goal is read strictly: the data plane process is the
		// daemon's too, so its RSS counts.
		fmt.Printf("goals: RSS of the daemon and its data plane %.1f MiB < 200: %s (daemon %.1f, data plane %.1f); status %.1f ms < 50: %s; restart to ready %.0f ms < 3000: %s; add_peer at size %.2f ms < 2: %s\n",
			s("rss_with_dataplane"), met(s("rss_with_dataplane") < 200), s("rss"), s("dataplane_rss"), s("status"), met(s("status") < 50), s("restart_to_ready"), met(s("restart_to_ready") < 3000), mean, met(mean < 2))
	}
	return err
}

// wireguardGoAtScale is the reference for the data plane's numbers: a
// standalone upstream wireguard-go (the version our fork is of, at its defaults) holding
// n peers with its device up, configured in one `wg setconf`; its memory,
// and the time `wg show dump` takes to read it all.
func wireguardGoAtScale(n int, dir string) error {
	wgGo, err := tool("wireguard")
	if err != nil {
		return err
	}
	ns := benchlib.NetNS("sw")
	dev := benchlib.Name("sw")
	p := benchlib.Start(filepath.Join(dir, "wireguard-go.log"), "ip", "netns", "exec", ns, "env", "LOG_LEVEL=error", wgGo, "-f", dev)
	benchlib.Defer(func() { os.Remove("/var/run/wireguard/" + dev + ".sock") })
	if err := waitFile("/var/run/wireguard/"+dev+".sock", 10*time.Second); err != nil {
		return err
	}
	var conf strings.Builder
	k, _ := wgtypes.GeneratePrivateKey()
	fmt.Fprintf(&conf, "[Interface]\nPrivateKey = %s\nListenPort = 51820\n", k)
	for i := range n {
		pk, _ := wgtypes.GeneratePrivateKey()
		fmt.Fprintf(&conf, "[Peer]\nPublicKey = %s\nEndpoint = 127.0.0.1:%d\nAllowedIPs = 10.246.%d.%d/32\n", pk.PublicKey(), 20000+i%40000, 128+i/250, i%250+1)
	}
	cf := filepath.Join(dir, "wg-scale.conf")
	if err := os.WriteFile(cf, []byte(conf.String()), 0o600); err != nil {
		return err
	}
	t0 := time.Now()
	benchlib.Must("ip", "netns", "exec", ns, "wg", "setconf", dev, cf)
	setconf := ms(time.Since(t0))
	benchlib.Must("ip", "-n", ns, "addr", "add", "10.246.64.1/24", "dev", dev)
	benchlib.Must("ip", "-n", ns, "link", "set", dev, "up")
	var dumps []float64
	for range 20 {
		t0 := time.Now()
		out := benchlib.Must("ip", "netns", "exec", ns, "wg", "show", dev, "dump")
		dumps = append(dumps, ms(time.Since(t0)))
		if lines := strings.Count(out, "\n"); lines != n+1 {
			return fmt.Errorf("wg show dump has %d lines, want %d", lines, n+1)
		}
	}
	var pid int
	for _, f := range processesWith(ns, "wireguard") {
		pid = f
	}
	rss, err := rssMiB(pid)
	if err != nil {
		return err
	}
	fmt.Printf("reference: standalone wireguard-go (defaults) holding %d peers, device up: RSS %.1f MiB; wg setconf of all %.0f ms; wg show dump median %.1f ms\n",
		n, rss, setconf, benchlib.Summarize(dumps).Median)
	p.Stop()
	return nil
}

func met(ok bool) string {
	if ok {
		return "MET"
	}
	return "NOT MET"
}

func sorted(xs []float64) []float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s
}

// dataplanePIDs are the WireGuard data plane processes in ns.
func dataplanePIDs(ns string) []int { return processesWith(ns, "wg-dataplane") }

// processesWith are the processes in ns whose command line has word.
func processesWith(ns, word string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		cmdline, _ := os.ReadFile("/proc/" + f + "/cmdline")
		if strings.Contains(string(cmdline), word) {
			pid, _ := strconv.Atoi(f)
			pids = append(pids, pid)
		}
	}
	return pids
}

// rssMiB is the resident set of a process in MiB, from /proc.
func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			kb, err := strconv.ParseFloat(f[0], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
