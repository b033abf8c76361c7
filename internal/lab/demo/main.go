//go:build linux

// Command demo shows the overlay working end to end on one machine: two
// nodes (network namespaces, each running zlayer-overlayd), a WireGuard
// mesh between them, a service "web" with a container on each node, and
// pings across. Everything it creates is removed when it ends, also on
// failure or Ctrl-C. Run it as root: make demo.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// demoTB runs the lab outside a test: logs go to stdout, a fatal error
// runs the cleanups and exits non-zero.
type demoTB struct{ cleanups []func() }

func (d *demoTB) Helper()                         {}
func (d *demoTB) Logf(format string, args ...any) { fmt.Printf(format+"\n", args...) }
func (d *demoTB) Cleanup(f func())                { d.cleanups = append(d.cleanups, f) }
func (d *demoTB) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo failed: "+format+"\n", args...)
	d.cleanup()
	os.Exit(1)
}
func (d *demoTB) cleanup() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func main() {
	daemon := flag.String("daemon", "bin/zlayer-overlayd", "zlayer-overlayd binary")
	flag.Parse()
	if err := checkTools(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	tb := &demoTB{}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Println("\ninterrupted; cleaning up")
		tb.cleanup()
		os.Exit(130)
	}()
	defer tb.cleanup()

	run(tb, *daemon)

	step("cleaning up: daemons, containers, namespaces and files")
	tb.cleanup()
	fmt.Println("\ndone: nothing of the demo is left on this machine")
}

// checkTools says what the demo needs and the machine lacks, before it
// creates anything: the lab's tools, and ping and wg, which it shows.
func checkTools() error {
	if err := lab.Check(); err != nil {
		return err
	}
	for _, t := range []struct{ bin, pkg string }{{"ping", "iputils-ping"}, {"wg", "wireguard-tools"}} {
		if _, err := exec.LookPath(t.bin); err != nil {
			return fmt.Errorf("needs %s on PATH (Debian: apt-get install %s)", t.bin, t.pkg)
		}
	}
	return nil
}

// run is the demo's story; every step fails through tb, whose cleanups
// remove what the lab made.
func run(tb lab.TB, daemon string) {
	l := lab.New(tb, lab.Options{Daemon: daemon})
	step("two nodes on an underlay switch, each running zlayer-overlayd")
	a, b := l.AddNode("a"), l.AddNode("b")
	nodes := []*lab.Node{a, b}
	for _, n := range nodes {
		fmt.Printf("    node %s: namespace %s, underlay %s, socket %s\n", n.Name, n.NS, n.Underlay, n.Socket)
	}

	step("setup_global_overlay on both (cluster 10.200.0.0/16, one /24 slice each)")
	st := make([]protocol.StatusSnapshot, 2)
	web := make([]protocol.ServiceOverlay, 2)
	for i, n := range nodes {
		resp := n.Call(protocol.SetupGlobalOverlay{Deployment: "demo", InstanceID: n.Name, ClusterCIDR: "10.200.0.0/16",
			SliceCIDR: fmt.Sprintf("10.200.%d.0/24", i+1), WGPort: 51820})
		st[i] = n.Status()
		fmt.Printf("    %s: device %s, node IP %s, key %s\n", n.Name, resp.(protocol.BridgeName).Name, st[i].NodeIP, st[i].PublicKey)
	}

	step("setup_service_overlay web on both")
	for i, n := range nodes {
		web[i] = n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
		fmt.Printf("    %s: bridge %s, subnet %s, gateway %s\n", n.Name, web[i].Name, web[i].Subnet, web[i].Gateway)
	}

	step("add_peer: each node learns the other (allowed IPs: its slice and its web subnet)")
	for i, n := range nodes {
		j := 1 - i
		n.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey:               st[j].PublicKey,
			Endpoint:                netip.AddrPortFrom(nodes[j].Underlay, 51820).String(),
			AllowedIPs:              fmt.Sprintf("10.200.%d.0/24,%s", j+1, web[j].Subnet),
			PersistentKeepaliveSecs: 25,
		}})
	}

	step("ping across the tunnel: a -> %s", st[1].NodeIP)
	lab.Eventually(tb, 15*time.Second, "ping", func() error { return a.Ping(st[1].NodeIP, 3) })
	out, _ := a.Exec("ping", "-c", "3", "-n", st[1].NodeIP.String())
	fmt.Print(indent(out))

	step("wg show on node a (wireguard-tools reading our userspace device)")
	fmt.Print(indent(a.MustExec("wg", "show", "zl-demo-g")))

	step("a container (a process in its own network namespace) on each node, attached to web")
	var cs []*lab.Container
	var ips []netip.Addr
	for _, n := range nodes {
		c := l.AddContainer("web-on-" + n.Name)
		att := n.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: true}).(protocol.Attached)
		fmt.Printf("    pid %d on node %s: eth0 %s, eth1 %s, resolver %s (%s)\n", c.PID, n.Name, att.IP, att.GlobalIP, att.DNSServer, att.DNSDomain)
		cs = append(cs, c)
		ips = append(ips, att.IP)
	}

	step("the containers ping each other across the overlay")
	lab.Eventually(tb, 15*time.Second, "container ping", func() error { return cs[0].Ping(ips[1], 3) })
	out, _ = cs[0].Exec("ping", "-c", "3", "-n", ips[1].String())
	fmt.Print(indent(out))
	lab.Eventually(tb, 15*time.Second, "container ping back", func() error { return cs[1].Ping(ips[0], 1) })

	step("overlayctl status of node a")
	ctl := strings.TrimSuffix(daemon, "zlayer-overlayd") + "overlayctl"
	if st, err := os.Stat(ctl); err == nil && !st.IsDir() {
		if out, err := runCmd(ctl, "--socket", a.Socket, "status"); err == nil {
			fmt.Print(indent(out))
		}
	}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}
