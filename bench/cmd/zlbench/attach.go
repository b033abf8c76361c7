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
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/zlayer/zlayer-overlayd/bench/internal/benchlib"
	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// benchAttach compares wiring a container into a bridge: our
// attach_container/detach_container against the CNI bridge + host-local
// plugins doing the same (veth into the container's namespace, address,
// default route, bridge port), each in a "node" namespace of its own.
// Containers are processes in namespaces of their own, created before the
// clock starts. CNI is timed the way runtimes use it: one plugin exec per
// ADD or DEL. Detach is timed twice: until the answer, and until the host
// link is gone from the kernel (our daemon answers before the kernel's
// RCU-deferred link deletion completes; CNI DEL waits for it).
func benchAttach() error {
	bridge, err := tool("bridge")
	if err != nil {
		return err
	}
	if _, err := tool("host-local"); err != nil {
		return err
	}
	dir := benchlib.TempDir()
	perRound := 10
	if *quick {
		perRound = 4
	}

	oursNS := benchlib.NetNS("an")
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
	for _, req := range []protocol.Request{
		protocol.SetupGlobalOverlay{Deployment: "bench", InstanceID: "1", ClusterCIDR: "10.240.0.0/16", SliceCIDR: "10.240.1.0/24", WGPort: 51820},
		protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeShared, Subnet: "10.240.8.0/24"},
	} {
		if _, err := c.Call(ctx, req); err != nil {
			return fmt.Errorf("%s: %v", req.Op(), err)
		}
	}
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

	cniNS := benchlib.NetNS("cn")
	cniConf, _ := json.Marshal(map[string]any{
		"cniVersion": "1.0.0", "name": benchlib.Name("net"), "type": "bridge",
		"bridge": "zltbbr0", "isGateway": true, "ipMasq": false, "mtu": 1420,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": "10.241.8.0/24"}}},
			"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
			"dataDir": filepath.Join(dir, "cni-ipam"),
		},
	})
	cniPath := filepath.Dir(bridge)
	cni := func(command, id, netnsPath string) (time.Duration, error) {
		cmd := exec.Command("ip", "netns", "exec", cniNS, bridge)
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netnsPath,
			"CNI_IFNAME=eth0", "CNI_PATH=" + cniPath, "PATH=" + os.Getenv("PATH")}
		cmd.Stdin = bytes.NewReader(cniConf)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		if err != nil {
			return 0, fmt.Errorf("CNI %s: %v: %s", command, err, out.String())
		}
		return took, nil
	}
	// `ip netns exec` itself costs a fork and exec; it is measured once and
	// subtracted so CNI is charged for the plugin only.
	var nsexec []float64
	for range 5 {
		start := time.Now()
		if err := exec.Command("ip", "netns", "exec", cniNS, "true").Run(); err != nil {
			return err
		}
		nsexec = append(nsexec, ms(time.Since(start)))
	}
	nsexecCost := benchlib.Summarize(nsexec).Median
	fmt.Printf("attach: %d containers per round; `ip netns exec … true` costs %.2f ms, subtracted from CNI times\n", perRound, nsexecCost)

	// container makes a namespace with a process in it (not timed).
	// The previous container is removed before the next is made, so
	// neither side works in a host crowded with namespaces.
	var prev func()
	container := func(tag string) (name string, pid int) {
		if prev != nil {
			prev()
		}
		name = benchlib.NetNS(tag)
		p := benchlib.Start("", "ip", "netns", "exec", name, "sleep", "3600")
		prev = func() { p.Stop(); benchlib.Run("ip", "netns", "delete", name) }
		// `ip netns exec` enters the namespace after the process exists:
		// wait for it, or the daemon would see the parent's namespace.
		pid = p.Cmd.Process.Pid
		if err := p.WaitFor("container "+name, 10*time.Second, func() bool { return sameNetns(pid, name) }); err != nil {
			benchlib.Fatal("%v", err)
		}
		return name, pid
	}
	serial := 0
	res, err := benchlib.Interleave("container attach / detach", *rounds, []benchlib.Metric{
		{Name: "attach", Unit: "ms", Better: "lower", Goal: 0.25},
		{Name: "detach_answer", Unit: "ms", Better: "lower", Goal: 0.25},
		{Name: "detach_link_gone", Unit: "ms", Better: "lower"},
	},
		benchlib.Contender{Name: "zlayer-overlayd", Run: func(round int) (map[string]float64, error) {
			var att, det, gone []float64
			for range perRound {
				serial++
				_, pid := container("c" + strconv.Itoa(serial))
				h := protocol.LinuxPID(uint32(pid))
				start := time.Now()
				if _, err := c.Call(ctx, protocol.AttachContainer{Handle: h, Service: "web"}); err != nil {
					return nil, fmt.Errorf("attach: %v", err)
				}
				att = append(att, ms(time.Since(start)))
				st, err := c.Status(ctx)
				if err != nil {
					return nil, err
				}
				link := ""
				for _, a := range st.Attachments {
					if a.Handle == h {
						link = a.HostLink
					}
				}
				if link == "" {
					return nil, fmt.Errorf("attached container %d has no host link in status", pid)
				}
				start = time.Now()
				if _, err := c.Call(ctx, protocol.DetachContainer{Handle: h}); err != nil {
					return nil, fmt.Errorf("detach: %v", err)
				}
				det = append(det, ms(time.Since(start)))
				for {
					if _, err := oursNL.LinkByName(link); err != nil {
						break
					}
					if time.Since(start) > 10*time.Second {
						return nil, fmt.Errorf("host link %s still there 10 s after detach", link)
					}
					time.Sleep(100 * time.Microsecond)
				}
				gone = append(gone, ms(time.Since(start)))
			}
			return map[string]float64{
				"attach":           benchlib.Summarize(att).Median,
				"detach_answer":    benchlib.Summarize(det).Median,
				"detach_link_gone": benchlib.Summarize(gone).Median,
			}, nil
		}},
		benchlib.Contender{Name: "cni-bridge+host-local", Run: func(round int) (map[string]float64, error) {
			var add, del []float64
			for range perRound {
				serial++
				name, _ := container("c" + strconv.Itoa(serial))
				id := "zltb-" + strconv.Itoa(serial)
				path := "/var/run/netns/" + name
				t, err := cni("ADD", id, path)
				if err != nil {
					return nil, err
				}
				add = append(add, ms(t)-nsexecCost)
				t, err = cni("DEL", id, path)
				if err != nil {
					return nil, err
				}
				del = append(del, ms(t)-nsexecCost)
			}
			d := benchlib.Summarize(del).Median
			return map[string]float64{"attach": benchlib.Summarize(add).Median, "detach_answer": d, "detach_link_gone": d}, nil
		}},
	)
	if res != nil {
		res.Print(os.Stdout)
	}
	return err
}

// sameNetns reports whether process pid is in the named namespace.
func sameNetns(pid int, name string) bool {
	var a, b syscall.Stat_t
	if syscall.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &a) != nil || syscall.Stat("/var/run/netns/"+name, &b) != nil {
		return false
	}
	return a.Ino == b.Ino && a.Dev == b.Dev
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
