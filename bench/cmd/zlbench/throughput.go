//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
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

// benchThroughput compares TCP throughput between two node namespaces
// joined by a veth pair: through our overlay (each node runs
// zlayer-overlayd at its defaults, configured over its socket), through a
// standalone upstream wireguard-go of the version our fork is of (configured by
// `wg`) run as users run it — with its defaults, and with GOMAXPROCS=1,
// which suits it better on small machines; the goal is against the better
// of the two — and over the raw veth. iperf3 -P1 and -P4.
func benchThroughput() error {
	wgGo, err := tool("wireguard")
	if err != nil {
		return err
	}
	for _, bin := range []string{"iperf3", "wg"} {
		if _, err := lookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed; run bench/install.sh (make bench does)", bin)
		}
	}
	dir := benchlib.TempDir()
	a, b := benchlib.NetNS("ta"), benchlib.NetNS("tb")
	va, vb := benchlib.Name("va"), benchlib.Name("vb")
	benchlib.Must("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
	benchlib.Defer(func() { benchlib.Run("ip", "link", "delete", va) })
	benchlib.Must("ip", "link", "set", va, "netns", a)
	benchlib.Must("ip", "link", "set", vb, "netns", b)
	under := map[string]string{a: "192.168.240.1", b: "192.168.240.2"}
	for ns, link := range map[string]string{a: va, b: vb} {
		benchlib.Must("ip", "-n", ns, "addr", "add", under[ns]+"/24", "dev", link)
		benchlib.Must("ip", "-n", ns, "link", "set", link, "up")
	}

	// The sender's congestion control shapes the result as much as the
	// data path does (docs/benchmarks.md, "What limits the rate on this
	// lab"): say which one every contender ran under.
	if *tcpCC != "" {
		avail, err := benchlib.Run("ip", "netns", "exec", a, "cat", "/proc/sys/net/ipv4/tcp_available_congestion_control")
		if err != nil {
			return fmt.Errorf("reading the available TCP congestion controls: %v", err)
		}
		if !slices.Contains(strings.Fields(avail), *tcpCC) {
			return fmt.Errorf("-tcp-cc %s: not available on this kernel (available: %s)", *tcpCC, strings.TrimSpace(avail))
		}
		fmt.Printf("throughput: every contender's iperf3 TCP uses congestion control %s (-tcp-cc)\n", *tcpCC)
	} else {
		cc, err := benchlib.Run("ip", "netns", "exec", a, "cat", "/proc/sys/net/ipv4/tcp_congestion_control")
		if err != nil {
			return fmt.Errorf("reading the TCP congestion control: %v", err)
		}
		fmt.Printf("throughput: every contender's iperf3 TCP uses congestion control %s (the namespaces' default, net.ipv4.tcp_congestion_control; -tcp-cc picks another)\n", strings.TrimSpace(cc))
	}

	// Ours: a daemon per node, each the other's peer.
	ctx := context.Background()
	overlayIP := map[string]string{}
	type node struct {
		ns, slice string
		d         *daemon
		c         *client.Client
		pub       string
	}
	nodes := []*node{{ns: a, slice: "10.243.1.0/24"}, {ns: b, slice: "10.243.2.0/24"}}
	// The defaults users get; userspace is what auto picks without the
	// kernel module, said explicitly so a host with it measures the same.
	daemonArgs := []string{"--wireguard", "userspace"}
	if *profile != "" {
		// The data path runs in a process of its own by default, which
		// the daemon's pprof does not see: profile it inside the daemon,
		// where it is the same code (the PGO profile, docs/benchmarks.md).
		daemonArgs = append(daemonArgs, "--pprof-listen", "127.0.0.1:16060", "--dataplane", "daemon")
	}
	for i, n := range nodes {
		n.d = newDaemon(n.ns, filepath.Join(dir, "ours"+strconv.Itoa(i)), daemonArgs...)
		if err := n.d.start(); err != nil {
			return fmt.Errorf("%v\n%s", err, n.d.log())
		}
		if n.c, err = client.Dial(ctx, n.d.sock); err != nil {
			return err
		}
		defer n.c.Close()
		if _, err := n.c.Call(ctx, protocol.SetupGlobalOverlay{Deployment: "bench", InstanceID: strconv.Itoa(i), ClusterCIDR: "10.243.0.0/16", SliceCIDR: n.slice, WGPort: 51820}); err != nil {
			return fmt.Errorf("setup_global_overlay: %v", err)
		}
		st, err := n.c.Status(ctx)
		if err != nil {
			return err
		}
		n.pub = st.PublicKey
		overlayIP[n.ns] = st.NodeIP.String()
	}
	for i, n := range nodes {
		o := nodes[1-i]
		if _, err := n.c.Call(ctx, protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: o.pub, Endpoint: under[o.ns] + ":51820", AllowedIPs: o.slice}}); err != nil {
			return fmt.Errorf("add_peer: %v", err)
		}
	}

	// Standalone wireguard-go configured by wg, as users run it.
	wgIP, err := startWireguardGo(wgGo, dir, "w", nil, a, b, under, "51821", "10.244.0")
	if err != nil {
		return err
	}
	wgIP1, err := startWireguardGo(wgGo, dir, "p", []string{"GOMAXPROCS=1"}, a, b, under, "51822", "10.245.0")
	if err != nil {
		return err
	}

	iperf := benchlib.Start(filepath.Join(dir, "iperf3.log"), "ip", "netns", "exec", b, "iperf3", "-s")
	targets := map[string]string{"zlayer-overlayd": overlayIP[b], "wireguard-go": wgIP[b], wgGo1: wgIP1[b], "raw-veth": under[b]}
	for name, ip := range targets {
		err := iperf.WaitFor("iperf3 via "+name, 20*time.Second, func() bool {
			_, err := benchlib.Run("ip", "netns", "exec", a, "iperf3", "-c", ip, "-t", "1", "-J")
			return err == nil
		})
		if err != nil {
			return err
		}
	}
	secs := "5"
	if *quick {
		secs = "2"
	}
	run := func(name string) func(int) (map[string]float64, error) {
		return func(round int) (map[string]float64, error) {
			out := map[string]float64{}
			for _, p := range []string{"1", "4"} {
				// Both nodes' profiles: the sender encrypts, the
				// receiver decrypts, and a PGO profile needs both.
				var stops []func() error
				if *profile != "" && round == 0 && name == "zlayer-overlayd" {
					dur, _ := time.ParseDuration(secs + "s")
					for i, ns := range []string{a, b} {
						stops = append(stops, startProfile(ns, dur, profilePath(fmt.Sprintf("throughput-P%s-%s", p, "ab"[i:i+1]))))
					}
				}
				bps, err := iperf3(a, targets[name], secs, p)
				for _, stop := range stops {
					if perr := stop(); perr != nil {
						fmt.Fprintln(os.Stderr, "throughput: profile:", perr)
					}
				}
				if err != nil {
					return nil, err
				}
				out["P"+p] = bps / 1e9
			}
			return out, nil
		}
	}
	res, err := benchlib.Interleave("overlay TCP throughput between two node namespaces, iperf3", *rounds, []benchlib.Metric{
		{Name: "P1", Unit: "Gbit/s", Better: "higher", Goal: 1.2, GoalBestOf: []string{"wireguard-go", wgGo1}},
		{Name: "P4", Unit: "Gbit/s", Better: "higher", Goal: 1.2, GoalBestOf: []string{"wireguard-go", wgGo1}},
	},
		benchlib.Contender{Name: "zlayer-overlayd", Run: run("zlayer-overlayd")},
		benchlib.Contender{Name: "wireguard-go", Run: run("wireguard-go")},
		benchlib.Contender{Name: wgGo1, Run: run(wgGo1)},
		benchlib.Contender{Name: "raw-veth", Run: run("raw-veth")},
	)
	if res != nil {
		res.Print(os.Stdout)
		fmt.Println("(raw veth is the ceiling: no encryption, no TUN)")
	}
	return err
}

// wgGo1 is standalone wireguard-go with GOMAXPROCS=1.
const wgGo1 = "wireguard-go GOMAXPROCS=1"

// startWireguardGo runs a standalone wireguard-go in each of namespaces a
// and b with env added to its environment, peers the two over the
// underlay on port, and returns each side's tunnel address (subnet.1 and
// subnet.2).
func startWireguardGo(bin, dir, tag string, env []string, a, b string, under map[string]string, port, subnet string) (map[string]string, error) {
	ips := map[string]string{a: subnet + ".1", b: subnet + ".2"}
	keys := map[string]wgtypes.Key{}
	devs := map[string]string{a: benchlib.Name(tag + "a"), b: benchlib.Name(tag + "b")}
	for _, ns := range []string{a, b} {
		k, _ := wgtypes.GeneratePrivateKey()
		keys[ns] = k
		dev := devs[ns]
		argv := append(append([]string{"ip", "netns", "exec", ns, "env", "LOG_LEVEL=error"}, env...), bin, "-f", dev)
		benchlib.StartInSession(filepath.Join(dir, dev+".log"), argv...)
		benchlib.Defer(func() { os.Remove("/var/run/wireguard/" + dev + ".sock") })
	}
	for _, ns := range []string{a, b} {
		dev := devs[ns]
		if err := waitFile("/var/run/wireguard/"+dev+".sock", 10*time.Second); err != nil {
			return nil, err
		}
		other := b
		if ns == b {
			other = a
		}
		kf := filepath.Join(dir, dev+".key")
		os.WriteFile(kf, []byte(keys[ns].String()), 0o600)
		benchlib.Must("ip", "netns", "exec", ns, "wg", "set", dev, "listen-port", port, "private-key", kf,
			"peer", keys[other].PublicKey().String(), "endpoint", under[other]+":"+port, "allowed-ips", ips[other]+"/32")
		benchlib.Must("ip", "-n", ns, "addr", "add", ips[ns]+"/24", "dev", dev)
		benchlib.Must("ip", "-n", ns, "link", "set", dev, "mtu", "1420", "up")
	}
	return ips, nil
}

// iperf3 runs one client test from namespace ns and returns the received
// bits per second.
func iperf3(ns, target, secs, parallel string) (float64, error) {
	args := []string{"ip", "netns", "exec", ns, "iperf3", "-c", target, "-t", secs, "-P", parallel, "-J"}
	if *tcpCC != "" {
		args = append(args, "-C", *tcpCC)
	}
	out, err := benchlib.Run(args...)
	if err != nil {
		return 0, err
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("iperf3 output: %v", err)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

func waitFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
