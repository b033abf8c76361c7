//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/zlayer/zlayer-overlayd/bench/internal/benchlib"
	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// benchCNI compares container ADD and DEL as a CNI runtime sees them,
// through cnitool (the reference client) on both sides: zlayer-cni handing
// the work to a zlayer-overlayd, against the reference bridge plugin with
// host-local IPAM doing it in-process. Each side has a "node" namespace of
// its own, in which cnitool runs with its own CNI_PATH and NETCONFPATH;
// each container is a fresh `ip netns add` namespace made before the clock
// starts. Times are cnitool's whole run (fork, exec, libcni, the plugin
// exec, its work, the result cache) less the cost of `ip netns exec`
// itself, measured once. For DEL, zlayer-cni answers once the daemon has
// committed the detach and deletes the veth in the background;
// del_link_gone is the time until the host end is gone from the kernel
// (for bridge, DEL returns only after that, so both values are the same).
func benchCNI() error {
	cnitool, err := tool("cnitool")
	if err != nil {
		return err
	}
	bridge, err := tool("bridge")
	if err != nil {
		return err
	}
	if _, err := tool("host-local"); err != nil {
		return err
	}
	plugin, err := cniPluginBin()
	if err != nil {
		return err
	}
	dir := benchlib.TempDir()
	perRound := 10
	if *quick {
		perRound = 4
	}

	// Ours: a daemon at its defaults (but for the background passes, kept
	// out of the measurement) with a global overlay and the network's
	// service set up, as on a node that already runs containers.
	oursNS := benchlib.NetNS("kn")
	ours := newDaemon(oursNS, filepath.Join(dir, "ours"), "--wireguard", "userspace")
	if err := ours.start(); err != nil {
		return fmt.Errorf("%v\n%s", err, ours.log())
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, ours.sock)
	if err != nil {
		return err
	}
	defer c.Close()
	oursNet := benchlib.Name("zn")
	for _, req := range []protocol.Request{
		protocol.SetupGlobalOverlay{Deployment: "bench", InstanceID: "1", ClusterCIDR: "10.240.0.0/16", SliceCIDR: "10.240.1.0/24", WGPort: 51820},
		protocol.SetupServiceOverlay{Service: oursNet, Mode: protocol.ModeShared, Subnet: "10.240.8.0/24"},
	} {
		if _, err := c.Call(ctx, req); err != nil {
			return fmt.Errorf("%s: %v", req.Op(), err)
		}
	}
	oursBin := filepath.Join(dir, "ours-bin")
	os.MkdirAll(oursBin, 0o755)
	if err := copyFile(plugin, filepath.Join(oursBin, "zlayer-cni")); err != nil {
		return err
	}
	oursConf := filepath.Join(dir, "ours-net.d")
	if err := writeConflist(oursConf, oursNet, map[string]any{"type": "zlayer-cni", "socket": ours.sock}); err != nil {
		return err
	}

	// The peer: bridge + host-local, tuned as a user would for the same
	// job (gateway on the bridge, no masquerade, the overlay's MTU).
	peerNS := benchlib.NetNS("kp")
	peerNet := benchlib.Name("bn")
	peerConf := filepath.Join(dir, "peer-net.d")
	if err := writeConflist(peerConf, peerNet, map[string]any{
		"type": "bridge", "bridge": "zltbbr1", "isGateway": true, "ipMasq": false, "mtu": 1420,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": "10.241.8.0/24"}}},
			"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
			"dataDir": filepath.Join(dir, "cni-ipam"),
		},
	}); err != nil {
		return err
	}
	peerBin := filepath.Dir(bridge)

	// cnitool keeps results in libcni's cache; each DEL removes its entry,
	// and an interrupted run's are removed here.
	benchlib.Defer(func() {
		for _, n := range []string{oursNet, peerNet} {
			files, _ := filepath.Glob("/var/lib/cni/results/" + n + "-*")
			for _, f := range files {
				os.Remove(f)
			}
		}
		// The cache's directories too, when nothing else is in them.
		os.Remove("/var/lib/cni/results")
		os.Remove("/var/lib/cni")
	})
	run := func(node, bin, conf, command, network, netnsPath string) (time.Duration, []byte, error) {
		cmd := exec.Command("ip", "netns", "exec", node, cnitool, command, network, netnsPath)
		cmd.Env = []string{"CNI_PATH=" + bin, "NETCONFPATH=" + conf, "PATH=" + os.Getenv("PATH")}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		if err != nil {
			return 0, nil, fmt.Errorf("cnitool %s %s: %v: %s%s", command, network, err, out.String(), errb.String())
		}
		return took, out.Bytes(), nil
	}
	var nsexec []float64
	for range 5 {
		start := time.Now()
		if err := exec.Command("ip", "netns", "exec", oursNS, "true").Run(); err != nil {
			return err
		}
		nsexec = append(nsexec, ms(time.Since(start)))
	}
	nsexecCost := benchlib.Summarize(nsexec).Median
	fmt.Printf("cni: %d containers per round, cnitool %s; `ip netns exec … true` costs %.2f ms, subtracted from every time\n", perRound, cnitool, nsexecCost)

	oursNetns, err := netns.GetFromName(oursNS)
	if err != nil {
		return err
	}
	defer oursNetns.Close()
	oursNL, err := netlink.NewHandleAt(oursNetns)
	if err != nil {
		return err
	}
	defer oursNL.Close()

	var prev func()
	container := func(tag string) string {
		if prev != nil {
			prev()
		}
		name := benchlib.NetNS(tag)
		prev = func() { benchlib.Run("ip", "netns", "delete", name) }
		return "/var/run/netns/" + name
	}
	serial := 0
	side := func(node, bin, conf, network string, background bool) func(int) (map[string]float64, error) {
		return func(int) (map[string]float64, error) {
			var add, del, gone []float64
			for range perRound {
				serial++
				path := container("k" + strconv.Itoa(serial))
				t, out, err := run(node, bin, conf, "add", network, path)
				if err != nil {
					return nil, err
				}
				add = append(add, ms(t)-nsexecCost)
				var res struct {
					Interfaces []struct {
						Name    string `json:"name"`
						Sandbox string `json:"sandbox"`
					} `json:"interfaces"`
				}
				if err := json.Unmarshal(out, &res); err != nil || len(res.Interfaces) == 0 {
					return nil, fmt.Errorf("cnitool add printed no result: %v: %s", err, out)
				}
				start := time.Now()
				t, _, err = run(node, bin, conf, "del", network, path)
				if err != nil {
					return nil, err
				}
				del = append(del, ms(t)-nsexecCost)
				if !background {
					gone = append(gone, ms(t)-nsexecCost)
					continue
				}
				host := res.Interfaces[0].Name // zlayer-cni lists the host end first
				for {
					if _, err := oursNL.LinkByName(host); err != nil {
						break
					}
					if time.Since(start) > 10*time.Second {
						return nil, fmt.Errorf("host link %s still there 10 s after del", host)
					}
					time.Sleep(100 * time.Microsecond)
				}
				gone = append(gone, ms(time.Since(start))-nsexecCost)
			}
			return map[string]float64{
				"add":           benchlib.Summarize(add).Median,
				"del":           benchlib.Summarize(del).Median,
				"del_link_gone": benchlib.Summarize(gone).Median,
			}, nil
		}
	}
	res, err := benchlib.Interleave("cnitool add / del", *rounds, []benchlib.Metric{
		{Name: "add", Unit: "ms", Better: "lower"},
		{Name: "del", Unit: "ms", Better: "lower"},
		{Name: "del_link_gone", Unit: "ms", Better: "lower"},
	},
		benchlib.Contender{Name: "zlayer-cni", Run: side(oursNS, oursBin, oursConf, oursNet, true)},
		benchlib.Contender{Name: "cni-bridge+host-local", Run: side(peerNS, peerBin, peerConf, peerNet, false)},
	)
	if prev != nil {
		prev()
	}
	if res != nil {
		res.Print(os.Stdout)
	}
	return err
}

func writeConflist(dir, name string, plugin map[string]any) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": name, "plugins": []any{plugin}})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "10-"+name+".conflist"), b, 0o644)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}
