package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// world is a daemon (the real engine on in-memory doubles of the kernel)
// behind a real socket, and a plugin whose look into namespaces reads those
// doubles: every command goes through the client, the wire and the engine.
type world struct {
	t      *testing.T
	dir    string
	socket string
	net    *enginetest.Net
	procs  *enginetest.Procs
	e      *engine.Engine
	p      *Plugin
	out    bytes.Buffer
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), net: enginetest.NewNet(), procs: enginetest.NewProcs()}
	w.socket = filepath.Join(w.dir, "d.sock")
	st, err := store.Open(filepath.Join(w.dir, store.FileName), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e, err := engine.New(engine.Config{
		Store: st, Net: w.net, WG: enginetest.NewWG(w.net, wg.KindKernel), Procs: w.procs,
		Log: slog.New(slog.DiscardHandler), ReconcileInterval: -1, HealthInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	w.e = e
	ln, err := ipc.Listen(w.socket, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &ipc.Server{Handler: e, EventQueue: 16}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })

	w.p = New()
	w.p.Stdout = &w.out
	w.p.DialTimeout, w.p.CallTimeout, w.p.StatusTimeout = 2*time.Second, 10*time.Second, time.Second
	w.p.Inspect = w.inspect
	w.p.HostLink = func(name string) (string, int, bool) {
		l, ok := w.net.Link(name)
		return "02:00:00:00:00:01", l.MTU, ok
	}
	return w
}

// inspect is what a namespace holds according to the doubles: the container
// end of each veth attached through path.
func (w *world) inspect(path, ifName string) (linuxnet.NetnsLink, bool, error) {
	if _, err := w.procs.NetnsFileInode(path); err != nil {
		return linuxnet.NetnsLink{}, false, err
	}
	for _, name := range w.net.Veths() {
		l, _ := w.net.Link(name)
		if l.Spec == nil || l.Spec.NetnsPath != path || l.Spec.IfName != ifName {
			continue
		}
		s := l.Spec
		out := linuxnet.NetnsLink{Name: ifName, Kind: "veth", Up: true, MTU: s.MTU, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, Addrs: []netip.Prefix{s.Addr}}
		out.Routes = append(out.Routes, linuxnet.Route{Dst: s.Addr.Masked(), Dev: ifName})
		if s.Gateway.IsValid() {
			out.Routes = append(out.Routes, linuxnet.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: s.Gateway, Dev: ifName})
		}
		if s.Addr2.IsValid() {
			out.Addrs = append(out.Addrs, s.Addr2)
			out.Routes = append(out.Routes, linuxnet.Route{Dst: s.Addr2.Masked(), Dev: ifName})
		}
		if s.Gateway2.IsValid() {
			out.Routes = append(out.Routes, linuxnet.Route{Dst: netip.MustParsePrefix("::/0"), Via: s.Gateway2, Dev: ifName})
		}
		for _, r := range s.Routes {
			out.Routes = append(out.Routes, linuxnet.Route{Dst: r.Dst, Via: r.Via, OnLink: r.OnLink, Dev: ifName})
		}
		return out, true, nil
	}
	return linuxnet.NetnsLink{}, false, nil
}

func (w *world) call(req protocol.Request) protocol.Response {
	w.t.Helper()
	resp := w.e.Handle(context.Background(), req)
	if e, bad := resp.(protocol.Err); bad {
		w.t.Fatalf("%s: %s", req.Op(), e.Message)
	}
	return resp
}

func (w *world) globalUp() {
	w.call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.3.0/24", WGPort: 51820})
}

// netns makes a namespace file: a file the plugin can stat, and the
// daemon's double of a namespace at that path.
func (w *world) netns(name string) string {
	w.t.Helper()
	p := filepath.Join(w.dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.procs.AddNetns(p)
	return p
}

func (w *world) conf(extra string) []byte {
	return []byte(`{"cniVersion":"1.1.0","name":"web","type":"zlayer-cni","socket":"` + w.socket + `"` + extra + `}`)
}

func args(conf []byte, netns, cid, ifName string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: cid, Netns: netns, IfName: ifName, StdinData: conf}
}

// add runs ADD and parses what it printed.
func (w *world) add(a *skel.CmdArgs) *current.Result {
	w.t.Helper()
	w.out.Reset()
	if err := w.p.Add(a); err != nil {
		w.t.Fatalf("ADD: %v", err)
	}
	r, err := current.NewResult(w.out.Bytes())
	if err != nil {
		w.t.Fatalf("ADD printed no 1.x result: %v\n%s", err, w.out.String())
	}
	return r.(*current.Result)
}

func codeOf(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestAddSetsTheServiceUpAndPrintsTheResult(t *testing.T) {
	w := newWorld(t)
	w.globalUp()
	ns := w.netns("c1")
	res := w.add(args(w.conf(`,"join_global":true`), ns, "c1", "eth0"))

	st := w.e.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult)
	if len(st.Services) != 1 || st.Services[0].Service != "web" || len(st.NetnsAttachments) != 1 {
		t.Fatalf("daemon after ADD: services %+v attachments %+v", st.Services, st.NetnsAttachments)
	}
	svc, att := st.Services[0], st.NetnsAttachments[0]
	subnet := netip.MustParsePrefix(svc.Subnet)
	if res.CNIVersion != "1.1.0" || len(res.Interfaces) != 4 || len(res.IPs) != 2 || len(res.Routes) != 2 {
		t.Fatalf("result %s", w.out.String())
	}
	host, ctr := res.Interfaces[0], res.Interfaces[1]
	if host.Name != att.HostLink || host.Sandbox != "" || host.Mac == "" || ctr.Name != "eth0" || ctr.Sandbox != ns || ctr.Mac != "02:00:00:00:00:02" {
		t.Errorf("interfaces %v %v", host, ctr)
	}
	if gh, gc := res.Interfaces[2], res.Interfaces[3]; gc.Name != "eth0g" || gc.Sandbox != ns || gh.Sandbox != "" || !strings.HasPrefix(gh.Name, "zl-vn") {
		t.Errorf("global interfaces %v %v", gh, gc)
	}
	ip := res.IPs[0]
	if *ip.Interface != 1 || ip.Address.String() != netip.PrefixFrom(att.IP, subnet.Bits()).String() || ip.Gateway.String() != svc.Gateway.String() {
		t.Errorf("ip %v; want %s/%d via %s on interface 1", ip, att.IP, subnet.Bits(), svc.Gateway)
	}
	if g := res.IPs[1]; *g.Interface != 3 || g.Address.String() != att.GlobalIP.String()+"/32" || g.Gateway != nil {
		t.Errorf("global ip %v; want %s/32 on interface 3", g, att.GlobalIP)
	}
	if r := res.Routes[0]; r.Dst.String() != "0.0.0.0/0" || r.GW.String() != svc.Gateway.String() {
		t.Errorf("default route %v", r)
	}
	if r := res.Routes[1]; r.Dst.String() != "10.200.0.0/16" || r.GW.String() != "10.200.3.1" {
		t.Errorf("cluster route %v", r)
	}

	// ADD again: the same result, no new attachment.
	first := w.out.String()
	w.add(args(w.conf(`,"join_global":true`), ns, "c1", "eth0"))
	if w.out.String() != first {
		t.Errorf("a repeated ADD printed\n%s\nnot\n%s", w.out.String(), first)
	}
	// An older configuration version gets its own result version.
	w.out.Reset()
	old := bytes.Replace(w.conf(`,"join_global":true`), []byte(`"1.1.0"`), []byte(`"0.4.0"`), 1)
	if err := w.p.Add(args(old, ns, "c1", "eth0")); err != nil {
		t.Fatal(err)
	}
	var v struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Version string `json:"version"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(w.out.Bytes(), &v); err != nil || v.CNIVersion != "0.4.0" || len(v.IPs) != 2 || v.IPs[0].Version != "4" {
		t.Errorf("0.4.0 result %s (%v)", w.out.String(), err)
	}
}

// TestDualStack: in a dual-stack cluster the result has an address of
// each family on each interface (with their gateways and default routes),
// and CHECK accepts it.
func TestDualStack(t *testing.T) {
	w := newWorld(t)
	w.call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", WGPort: 51820,
		ClusterCIDR: "10.200.0.0/16,fd00:200::/56", SliceCIDR: "10.200.3.0/24,fd00:200:0:3::/64"})
	ns := w.netns("c1")
	res := w.add(args(w.conf(`,"join_global":true`), ns, "c1", "eth0"))
	att := w.e.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult).NetnsAttachments[0]
	var onEth0, onGlobal []string
	for _, ip := range res.IPs {
		switch *ip.Interface {
		case 1:
			onEth0 = append(onEth0, ip.Address.IP.String())
			if ip.Gateway == nil {
				t.Errorf("%s on eth0 without its gateway", ip.Address.String())
			}
		case 3:
			onGlobal = append(onGlobal, ip.Address.IP.String())
		}
	}
	if fmt.Sprint(onEth0) != fmt.Sprint(att.IPs) || fmt.Sprint(onGlobal) != fmt.Sprint(att.GlobalIPs) || len(att.IPs) != 2 {
		t.Fatalf("result addresses eth0 %v eth0g %v; the daemon holds %v and %v", onEth0, onGlobal, att.IPs, att.GlobalIPs)
	}
	var dsts []string
	for _, r := range res.Routes {
		dsts = append(dsts, r.Dst.String())
	}
	if fmt.Sprint(dsts) != "[0.0.0.0/0 ::/0 10.200.0.0/16 fd00:200::/56]" {
		t.Errorf("routes %v", dsts)
	}
	if err := w.p.Check(args(w.conf(`,"join_global":true,"prevResult":`+w.out.String()), ns, "c1", "eth0")); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
}

func TestAddRefusals(t *testing.T) {
	w := newWorld(t)
	w.globalUp()
	ns := w.netns("c1")
	if err := w.p.Add(args(w.conf(""), "", "c1", "eth0")); codeOf(err) != types.ErrInvalidNetNS {
		t.Errorf("ADD without CNI_NETNS: %v", err)
	}
	if err := w.p.Add(args(w.conf(""), filepath.Join(w.dir, "none"), "c1", "eth0")); codeOf(err) != types.ErrInvalidNetNS {
		t.Errorf("ADD with a missing namespace: %v", err)
	}
	// A file the plugin sees but the daemon does not: the daemon's words.
	p := filepath.Join(w.dir, "elsewhere")
	os.WriteFile(p, nil, 0o600)
	err := w.p.Add(args(w.conf(""), p, "c1", "eth0"))
	if codeOf(err) != ErrRefused || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("ADD of a namespace the daemon cannot see: %v", err)
	}
	if err := w.p.Add(args(w.conf(""), ns, "c1", "eth/0")); codeOf(err) != ErrRefused || !strings.Contains(err.Error(), "ifname") {
		t.Errorf("ADD with a bad ifname: %v", err)
	}
	bad := []byte(`{"cniVersion":"1.1.0","name":"has space","type":"zlayer-cni","socket":"` + w.socket + `"}`)
	if err := w.p.Add(args(bad, ns, "c1", "eth0")); codeOf(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `set "service"`) {
		t.Errorf("ADD with a network name that is no service name: %v", err)
	}
	gone := []byte(`{"cniVersion":"1.1.0","name":"web","type":"zlayer-cni","socket":"` + filepath.Join(w.dir, "nobody.sock") + `"}`)
	w.p.DialTimeout = 200 * time.Millisecond
	if err := w.p.Add(args(gone, ns, "c1", "eth0")); codeOf(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("ADD with no daemon: %v", err)
	}
	if st := w.e.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult); len(st.NetnsAttachments) != 0 {
		t.Errorf("refused ADDs left %+v", st.NetnsAttachments)
	}
}

func TestDelIsIdempotentAndNeedsNoNamespace(t *testing.T) {
	w := newWorld(t)
	w.globalUp()
	ns := w.netns("c1")
	w.add(args(w.conf(""), ns, "c1", "eth0"))
	// The runtime deleted the namespace first.
	w.procs.DeleteNetns(ns)
	w.net.DeleteNetns(ns)
	for i := range 2 {
		if err := w.p.Del(args(w.conf(""), "", "c1", "eth0")); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	st := w.e.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult)
	if len(st.NetnsAttachments) != 0 {
		t.Fatalf("after DEL: %+v", st.NetnsAttachments)
	}
	// DEL of something never added, with a configuration whose name is
	// not a service name: still fine.
	odd := []byte(`{"cniVersion":"1.1.0","name":"has space","type":"zlayer-cni","socket":"` + w.socket + `"}`)
	if err := w.p.Del(args(odd, "", "never", "eth0")); err != nil {
		t.Errorf("DEL of an unknown container: %v", err)
	}
}

func TestCheck(t *testing.T) {
	w := newWorld(t)
	w.globalUp()
	ns := w.netns("c1")
	w.add(args(w.conf(`,"join_global":true`), ns, "c1", "eth0"))
	prev := w.out.String()
	withPrev := func(prevResult string) []byte {
		c := w.conf(`,"join_global":true,"prevResult":` + prevResult)
		return c
	}
	if err := w.p.Check(args(withPrev(prev), ns, "c1", "eth0")); err != nil {
		t.Fatalf("CHECK right after ADD: %v", err)
	}
	if err := w.p.Check(args(w.conf(""), ns, "c1", "eth0")); codeOf(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("CHECK without prevResult: %v", err)
	}
	if err := w.p.Check(args(withPrev(prev), ns, "c2", "eth0")); codeOf(err) != types.ErrUnknownContainer {
		t.Errorf("CHECK of an unknown container: %v", err)
	}
	// prevResult that does not match what the daemon holds.
	var r map[string]any
	json.Unmarshal([]byte(prev), &r)
	ip := r["ips"].([]any)[0].(map[string]any)
	orig := ip["address"]
	ip["address"] = "10.200.3.99/27"
	forged, _ := json.Marshal(r)
	if err := w.p.Check(args(withPrev(string(forged)), ns, "c1", "eth0")); codeOf(err) != ErrCheckFailed || !strings.Contains(err.Error(), "zlayer-overlayd holds") {
		t.Errorf("CHECK with a foreign address: %v", err)
	}
	ip["address"] = orig
	r["routes"] = append(r["routes"].([]any), map[string]any{"dst": "192.0.2.0/24", "gw": "10.200.3.1"})
	forged, _ = json.Marshal(r)
	if err := w.p.Check(args(withPrev(string(forged)), ns, "c1", "eth0")); codeOf(err) != ErrCheckFailed || !strings.Contains(err.Error(), "no route to 192.0.2.0/24") {
		t.Errorf("CHECK with a route the namespace lacks: %v", err)
	}
	// Someone changed the address inside the container.
	st := w.e.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult)
	l, _ := w.net.Link(st.NetnsAttachments[0].HostLink)
	changed := l
	spec := *l.Spec
	spec.Addr = netip.MustParsePrefix("10.200.3.99/27")
	changed.Spec = &spec
	w.net.AddLink(st.NetnsAttachments[0].HostLink, changed)
	if err := w.p.Check(args(withPrev(prev), ns, "c1", "eth0")); codeOf(err) != ErrCheckFailed || !strings.Contains(err.Error(), "does not carry") {
		t.Errorf("CHECK after the address changed: %v", err)
	}
	w.net.AddLink(st.NetnsAttachments[0].HostLink, l)
	if err := w.p.Check(args(withPrev(prev), ns, "c1", "eth0")); err != nil {
		t.Fatalf("CHECK with the address back: %v", err)
	}
	// Someone deleted the container's interface.
	w.net.DeleteLink(st.NetnsAttachments[0].HostLink)
	if err := w.p.Check(args(withPrev(prev), ns, "c1", "eth0")); codeOf(err) != ErrCheckFailed || !strings.Contains(err.Error(), "eth0 is missing") {
		t.Errorf("CHECK after the interface was deleted: %v", err)
	}
	// Reconcile repairs it; CHECK passes again.
	if _, err := w.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := w.p.Check(args(withPrev(prev), ns, "c1", "eth0")); err != nil {
		t.Errorf("CHECK after the repair: %v", err)
	}
}

func TestGCKeepsOnlyValidAttachmentsOfItsService(t *testing.T) {
	w := newWorld(t)
	w.globalUp()
	for _, c := range []string{"c1", "c2", "c3"} {
		w.add(args(w.conf(""), w.netns(c), c, "eth0"))
	}
	other := []byte(`{"cniVersion":"1.1.0","name":"db","type":"zlayer-cni","socket":"` + w.socket + `"}`)
	w.add(args(other, w.netns("d1"), "d1", "eth0"))
	w.add(args(w.conf(""), w.netns("c1"), "c1", "net1"))

	gc := w.conf(`,"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c3","ifname":"net9"}]`)
	if err := w.p.GC(args(gc, "", "", "")); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, a := range w.e.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult).NetnsAttachments {
		left = append(left, a.Service+":"+a.Handle.ContainerID+"/"+a.Handle.IfName)
	}
	want := map[string]bool{"web:c1/eth0": true, "db:d1/eth0": true}
	if len(left) != len(want) || !want[left[0]] || !want[left[1]] {
		t.Fatalf("after GC: %v, want %v", left, want)
	}
	// Without a list (cnitool's GC), nothing of the network is valid.
	if err := w.p.GC(args(w.conf(""), "", "", "")); err != nil {
		t.Fatal(err)
	}
	st := w.e.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult)
	if len(st.NetnsAttachments) != 1 || st.NetnsAttachments[0].Service != "db" {
		t.Fatalf("after GC without a list: %+v", st.NetnsAttachments)
	}
}

func TestStatus(t *testing.T) {
	w := newWorld(t)
	gone := []byte(`{"cniVersion":"1.1.0","name":"web","type":"zlayer-cni","socket":"` + filepath.Join(w.dir, "nobody.sock") + `"}`)
	if err := w.p.Status(args(gone, "", "", "")); codeOf(err) != ErrPluginNotAvailable || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("STATUS with no daemon: %v", err)
	}
	if err := w.p.Status(args(w.conf(""), "", "", "")); codeOf(err) != ErrPluginNotAvailable || !strings.Contains(err.Error(), "global overlay") {
		t.Errorf("STATUS without the global overlay: %v", err)
	}
	w.globalUp()
	if err := w.p.Status(args(w.conf(""), "", "", "")); err != nil {
		t.Errorf("STATUS with the overlay up: %v", err)
	}
	w.call(protocol.TeardownGlobalOverlay{})
	if err := w.p.Status(args(w.conf(""), "", "", "")); codeOf(err) != ErrPluginNotAvailable {
		t.Errorf("STATUS after a teardown: %v", err)
	}
}

func TestParseConf(t *testing.T) {
	c, err := ParseConf([]byte(`{"cniVersion":"1.1.0","name":"web","type":"zlayer-cni"}`), false)
	if err != nil || c.Service != "web" || c.Socket == "" || c.JoinGlobal {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err = ParseConf([]byte(`{"cniVersion":"1.1.0","name":"my net","type":"zlayer-cni","service":"api","socket":"/s","join_global":true}`), false)
	if err != nil || c.Service != "api" || c.Socket != "/s" || !c.JoinGlobal {
		t.Fatalf("explicit keys: %+v %v", c, err)
	}
	for in, want := range map[string]string{
		`{"cniVersion":"1.1.0","type":"zlayer-cni"}`:                          `no "name"`,
		`{"cniVersion":"1.1.0","name":"web","service":"a/b"}`:                 `"service"`,
		`{"cniVersion":"1.1.0","name":"web","join_global":"yes"}`:             "not valid JSON",
		`{"cniVersion":"1.1.0","name":"` + strings.Repeat("n", 64) + `"}`:     `set "service"`,
		`{"cniVersion":"1.1.0","name":"web","prevResult":{"cniVersion":"x"}}`: "prevResult",
	} {
		if _, err := ParseConf([]byte(in), true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConf(%s) = %v; want an error mentioning %s", in, err, want)
		}
	}
}

func TestVersionsIncludeGCAndStatus(t *testing.T) {
	got := fmt.Sprint(Versions.SupportedVersions())
	if !strings.Contains(got, "1.1.0") || !strings.Contains(got, "0.4.0") {
		t.Fatalf("supported versions %s", got)
	}
}
