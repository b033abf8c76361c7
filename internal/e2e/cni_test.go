//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// cnitoolPath is the reference CNI client, built from the cni module at
// the version go.mod pins.
const cnitoolPkg = "github.com/containernetworking/cni/cnitool"

// cniNode is a lab node set up the way an operator installs the plugin:
// zlayer-cni in a bin directory (CNI_PATH), a conflist naming it in a
// configuration directory (NETCONFPATH), both private to the test. cnitool
// runs inside the node (its network and mount namespaces), as a runtime on
// that machine would.
type cniNode struct {
	t       *testing.T
	n       *lab.Node
	tool    string
	bin     string
	conf    string
	network string
}

// libcniCache is where cnitool (libcni's default) keeps the results of
// ADDs, which CHECK and GC read; a test removes its entries at the end.
const libcniCache = "/var/lib/cni"

func newCNINode(t *testing.T, l *lab.Lab, n *lab.Node, network, pluginKeys string) *cniNode {
	t.Helper()
	c := &cniNode{t: t, n: n, tool: testbin.BuildPackage(t, cnitoolPkg), network: network}
	dir := filepath.Join(l.Dir(), "cni-"+n.Name)
	c.bin, c.conf = filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	for _, d := range []string{c.bin, c.conf} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	plugin, err := os.ReadFile(testbin.Build(t, "zlayer-cni"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.bin, "zlayer-cni"), plugin, 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"zlayer-cni","socket":%q%s}]}`, network, n.Socket, pluginKeys)
	if err := os.WriteFile(filepath.Join(c.conf, "10-"+network+".conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		leftovers, _ := filepath.Glob(filepath.Join(libcniCache, "results", network+"-*"))
		for _, f := range leftovers {
			os.Remove(f)
		}
		// Only when this left them empty (or made them).
		os.Remove(filepath.Join(libcniCache, "results"))
		os.Remove(libcniCache)
	})
	return c
}

// run runs `cnitool <cmd> <network> <netns>` inside the node.
func (c *cniNode) run(cmd, netns string) (string, error) {
	return c.n.Exec("env", "CNI_PATH="+c.bin, "NETCONFPATH="+c.conf, c.tool, cmd, c.network, netns)
}

func (c *cniNode) must(cmd, netns string) string {
	c.t.Helper()
	out, err := c.run(cmd, netns)
	if err != nil {
		c.t.Fatalf("node %s: cnitool %s %s %s: %v\n%s", c.n.Name, cmd, c.network, netns, err, out)
	}
	return out
}

// add runs cnitool add and checks the result against the namespace with
// iproute2: the address of the result is on the interface the result names,
// inside the namespace. It returns the result and that address.
func (c *cniNode) add(ns, path string) (*current.Result, netip.Prefix) {
	c.t.Helper()
	out := c.must("add", path)
	r, err := current.NewResult([]byte(out))
	if err != nil {
		c.t.Fatalf("cnitool add printed no CNI 1.x result: %v\n%s", err, out)
	}
	res := r.(*current.Result)
	if res.CNIVersion != "1.1.0" || len(res.IPs) == 0 || res.IPs[0].Interface == nil || *res.IPs[0].Interface >= len(res.Interfaces) {
		c.t.Fatalf("result is not what CNI 1.1.0 asks for: %s", out)
	}
	iface := res.Interfaces[*res.IPs[0].Interface]
	addr, err := netip.ParsePrefix(res.IPs[0].Address.String())
	if err != nil || iface.Sandbox != path || iface.Name != "eth0" {
		c.t.Fatalf("the result's address %s is on %+v, not on eth0 in %s", res.IPs[0].Address.String(), iface, path)
	}
	if have := nsAddrs(c.t, ns, iface.Name); !slices.Contains(have, addr) {
		c.t.Fatalf("iproute2 sees %v on %s in %s, not the result's %s", have, iface.Name, ns, addr)
	}
	if len(res.Routes) == 0 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != res.IPs[0].Gateway.String() {
		c.t.Fatalf("result routes %v, gateway %v", res.Routes, res.IPs[0].Gateway)
	}
	return res, addr
}

// nsAddrs lists the addresses of dev in namespace ns as iproute2 reports
// them (nil when there is no such interface).
func nsAddrs(t *testing.T, ns, dev string) []netip.Prefix {
	t.Helper()
	out, err := run("ip", "-j", "-n", ns, "addr", "show", "dev", dev)
	if err != nil {
		return nil
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		t.Fatalf("ip -j addr: %v\n%s", err, out)
	}
	var ps []netip.Prefix
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if ip, err := netip.ParseAddr(a.Local); err == nil {
				ps = append(ps, netip.PrefixFrom(ip, a.PrefixLen))
			}
		}
	}
	return ps
}

func nsHasLink(ns, dev string) bool {
	_, err := run("ip", "-n", ns, "link", "show", "dev", dev)
	return err == nil
}

func netnsAttachments(n *lab.Node) []protocol.AttachStatus { return n.Status().NetnsAttachments }

// TestCNIAcceptance is issue 20's acceptance on two lab nodes with the
// reference client: cnitool add on each node gives a CNI result whose
// address is on an interface in that namespace; the namespace on node 1
// pings the one on node 2 over the overlay; cnitool check passes (and
// fails when the namespace is tampered with); cnitool del removes the
// interface and the daemon's attachment, and a second del succeeds.
func TestCNIAcceptance(t *testing.T) {
	l := newLab(t)
	nodes := []*lab.Node{l.AddNode("n1"), l.AddNode("n2")}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil) // the service subnets are carved from the slices
	network := "zlcni" + l.ID
	type ctr struct {
		cn         *cniNode
		ns, path   string
		addr       netip.Prefix
		hostLink   string
		resultJSON *current.Result
	}
	var cs []ctr
	for i, n := range nodes {
		cn := newCNINode(t, l, n, network, "")
		ns, path := l.AddNetns(fmt.Sprintf("c%d", i+1))
		res, addr := cn.add(ns, path)
		if !netip.MustParsePrefix(sliceOf(i)).Contains(addr.Addr()) {
			t.Fatalf("node %s gave %s, outside its slice %s", n.Name, addr, sliceOf(i))
		}
		atts := netnsAttachments(n)
		if len(atts) != 1 || atts[0].IP != addr.Addr() || atts[0].Handle.Path != path || atts[0].Service != network {
			t.Fatalf("node %s's daemon holds %+v after the add", n.Name, atts)
		}
		if res.Interfaces[0].Name != atts[0].HostLink || res.Interfaces[0].Sandbox != "" {
			t.Fatalf("result's host interface %+v, daemon's host link %s", res.Interfaces[0], atts[0].HostLink)
		}
		if len(res.DNS.Nameservers) != 1 || res.DNS.Nameservers[0] != res.IPs[0].Gateway.String() {
			t.Errorf("result DNS %+v; the bridge gateway %s serves DNS", res.DNS, res.IPs[0].Gateway)
		}
		cs = append(cs, ctr{cn: cn, ns: ns, path: path, addr: addr, hostLink: atts[0].HostLink, resultJSON: res})
	}

	for i, from := range cs {
		to := cs[1-i]
		mustPing(t, from.ns, func(a netip.Addr, count int) error {
			out, err := run("ip", "netns", "exec", from.ns, "ping", "-c", fmt.Sprint(count), "-W", "1", "-n", a.String())
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}, to.addr.Addr())
	}

	for _, c := range cs {
		c.cn.must("check", c.path)
	}
	// CHECK looks: with eth0's address gone it fails; an ADD again
	// repairs (and is otherwise idempotent: the same address).
	c := cs[1]
	if _, err := run("ip", "-n", c.ns, "addr", "flush", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cn.run("check", c.path); err == nil || !strings.Contains(out, "does not carry") {
		t.Fatalf("cnitool check passed with eth0's address flushed: %v\n%s", err, out)
	}
	if _, addr := c.cn.add(c.ns, c.path); addr != c.addr {
		t.Fatalf("a repeated add gave %s, was %s", addr, c.addr)
	}
	c.cn.must("check", c.path)

	for _, c := range cs {
		c.cn.must("del", c.path)
		if nsHasLink(c.ns, "eth0") {
			t.Errorf("eth0 still in %s after cnitool del", c.ns)
		}
		if atts := netnsAttachments(c.cn.n); len(atts) != 0 {
			t.Errorf("node %s still holds %+v after cnitool del", c.cn.n.Name, atts)
		}
		if _, err := c.cn.n.Exec("ip", "link", "show", "dev", c.hostLink); err == nil {
			lab.Eventually(t, 10*time.Second, "host end "+c.hostLink+" removed", func() error {
				if _, err := c.cn.n.Exec("ip", "link", "show", "dev", c.hostLink); err == nil {
					return fmt.Errorf("%s still exists", c.hostLink)
				}
				return nil
			})
		}
		c.cn.must("del", c.path) // a second del succeeds
	}
}

// TestCNIStateSurvivesAndFollowsTheNamespace: netns attachments survive a
// daemon crash and the reconcile passes after it (they are not taken for
// dead PIDs); a deleted namespace is forgotten by reconcile, and DEL after
// it succeeds; GC (cnitool's, without valid attachments) detaches what the
// runtime's cache no longer knows; STATUS follows the daemon and the
// global overlay.
func TestCNIStateSurvivesAndFollowsTheNamespace(t *testing.T) {
	l := newLab(t)
	n := l.AddNode("n1")
	network := "zlcni" + l.ID
	cn := newCNINode(t, l, n, network, `,"service":"web"`)
	if out, err := cn.run("status", "/nonexistent"); err == nil || !strings.Contains(out, "global overlay") {
		t.Fatalf("cnitool status passed without a global overlay: %v\n%s", err, out)
	}
	setupGlobal(t, []*lab.Node{n})
	cn.must("status", "/nonexistent")

	type ctr struct{ ns, path string }
	var cs []ctr
	for _, name := range []string{"a", "b", "c"} {
		ns, path := l.AddNetns(name)
		cn.add(ns, path)
		cs = append(cs, ctr{ns, path})
	}
	a, b, c := cs[0], cs[1], cs[2]

	n.Restart()
	if got := len(netnsAttachments(n)); got != 3 {
		t.Fatalf("%d attachments after the restart, want 3", got)
	}
	// Two reconcile passes that started after the restart.
	first := n.Status().LastReconcile
	lab.Eventually(t, 20*time.Second, "two reconcile passes", func() error {
		if s := n.Status(); s.LastReconcile < first+2 {
			return fmt.Errorf("last reconcile %d, first seen %d", s.LastReconcile, first)
		}
		return nil
	})
	if got := len(netnsAttachments(n)); got != 3 {
		t.Fatalf("reconcile dropped live netns attachments: %d left", got)
	}
	cn.must("check", a.path)

	// The runtime deletes b's namespace without a DEL: reconcile forgets
	// it; a DEL afterwards is fine.
	l.DeleteNetns(b.ns)
	lab.Eventually(t, 20*time.Second, "reconcile forgets the deleted namespace", func() error {
		for _, x := range netnsAttachments(n) {
			if x.Handle.Path == b.path {
				return fmt.Errorf("still attached: %+v", x)
			}
		}
		return nil
	})
	cn.must("del", b.path)
	// c's namespace goes and the DEL follows at once.
	l.DeleteNetns(c.ns)
	cn.must("del", c.path)
	if atts := netnsAttachments(n); len(atts) != 1 || atts[0].Handle.Path != a.path {
		t.Fatalf("attachments %+v, want only a's", atts)
	}

	// GC: a's attachment is unknown to the runtime's cache, so only the
	// plugin's GC (no valid attachments) can remove it.
	cached, _ := filepath.Glob(filepath.Join(libcniCache, "results", network+"-*"))
	for _, f := range cached {
		os.Remove(f)
	}
	cn.must("gc", a.path)
	if atts := netnsAttachments(n); len(atts) != 0 {
		t.Fatalf("after gc: %+v", atts)
	}
	if nsHasLink(a.ns, "eth0") {
		t.Fatal("gc left eth0 in a's namespace")
	}

	n.Stop()
	if out, err := cn.run("status", "/nonexistent"); err == nil || !strings.Contains(out, "not reachable") {
		t.Fatalf("cnitool status passed with the daemon stopped: %v\n%s", err, out)
	}
}

// run runs a command on the test's own machine (the root namespaces).
func run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return string(out), err
}
