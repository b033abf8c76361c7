package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// harness is an engine on fakes, restartable over the same store and
// "kernel" the way the daemon restarts over the same data dir and host.
type harness struct {
	t     *testing.T
	dir   string
	net   *enginetest.Net
	wg    *enginetest.WG
	procs *enginetest.Procs
	st    *store.Store
	e     *Engine

	// tweak, when set, changes the engine's Config before each start.
	tweak func(*Config)

	mu     sync.Mutex
	events []protocol.Event
}

func newHarness(t *testing.T) *harness { return newHarnessWith(t, nil) }

// Kernel devices outlive the engine's Close; crash takes them down the
// way a SIGKILL takes userspace ones.
func newHarnessWith(t *testing.T, tweak func(*Config)) *harness {
	return newHarnessOn(t, wg.KindKernel, tweak)
}

// newHarnessOn runs the engine on a fake WireGuard backend of that kind.
func newHarnessOn(t *testing.T, kind string, tweak func(*Config)) *harness {
	return newHarnessIn(t, t.TempDir(), kind, tweak)
}

// newHarnessIn keeps the store and the node config in dir.
func newHarnessIn(t *testing.T, dir, kind string, tweak func(*Config)) *harness {
	h := &harness{t: t, dir: dir, net: enginetest.NewNet(), procs: enginetest.NewProcs(), tweak: tweak}
	h.wg = enginetest.NewWG(h.net, kind)
	h.start()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) start() {
	h.t.Helper()
	st, err := store.Open(filepath.Join(h.dir, store.FileName), store.Options{NoSync: true})
	if err != nil {
		h.t.Fatal(err)
	}
	h.st = st
	cfg := Config{
		Store:             st,
		NodeConfigPath:    filepath.Join(h.dir, NodeConfigFile),
		Net:               h.net,
		WG:                h.wg,
		Procs:             h.procs,
		Log:               slog.New(slog.NewTextHandler(testWriter{h.t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ReconcileInterval: -1,
		HealthInterval:    -1,
		Publish: func(ev protocol.Event) {
			h.mu.Lock()
			h.events = append(h.events, ev)
			h.mu.Unlock()
		},
	}
	if h.tweak != nil {
		h.tweak(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	h.e = e
}

func (h *harness) stop() {
	if h.e != nil {
		h.e.Close()
		h.e = nil
	}
	if h.st != nil {
		h.st.Close()
		h.st = nil
	}
}

// crash simulates SIGKILL and a restart: the process's devices vanish with
// it (userspace WireGuard), links and the store stay.
func (h *harness) crash() {
	h.t.Helper()
	h.e.bg.Wait()
	for _, d := range h.wg.Devices() {
		d.Close()
	}
	h.e = nil
	h.st.Close()
	h.st = nil
	h.start()
}

// drainSlice takes addresses with allocate_ip until the node slice gives
// no more (at most 300), and returns the first one wrong says must not be
// handed out.
func (h *harness) drainSlice(wrong func(netip.Addr) bool) (netip.Addr, bool) {
	h.t.Helper()
	for range 300 {
		ip, ok := h.do(protocol.AllocateIP{Service: "elsewhere"}).(protocol.IP)
		if !ok {
			break
		}
		if wrong(ip.IP) {
			return ip.IP, true
		}
	}
	return netip.Addr{}, false
}

func (h *harness) do(req protocol.Request) protocol.Response {
	h.t.Helper()
	return h.e.Handle(context.Background(), req)
}

func (h *harness) ok(req protocol.Request) protocol.Response {
	h.t.Helper()
	resp := h.do(req)
	if e, bad := resp.(protocol.Err); bad {
		h.t.Fatalf("%s: %s", req.Op(), e.Message)
	}
	return resp
}

func (h *harness) fails(req protocol.Request, want ...string) string {
	h.t.Helper()
	resp := h.do(req)
	e, bad := resp.(protocol.Err)
	if !bad {
		h.t.Fatalf("%s: want an err, got %+v", req.Op(), resp)
	}
	for _, w := range want {
		if !strings.Contains(e.Message, w) {
			h.t.Fatalf("%s: err %q does not mention %q", req.Op(), e.Message, w)
		}
	}
	return e.Message
}

func (h *harness) status() protocol.StatusSnapshot {
	h.t.Helper()
	return h.ok(protocol.Status{}).(protocol.StatusResult).StatusSnapshot
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func globalReq(slice string) protocol.SetupGlobalOverlay {
	return protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "42", ClusterCIDR: "10.200.0.0/16", SliceCIDR: slice, WGPort: 51820}
}

func newKey(t *testing.T) wgtypes.Key {
	k, err := wg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestGlobalOverlayWithExplicitSlice(t *testing.T) {
	h := newHarness(t)
	resp := h.ok(globalReq("10.200.3.0/24"))
	if resp.(protocol.BridgeName).Name != "zl-prod-g" {
		t.Fatalf("got %+v", resp)
	}
	s := h.status()
	if s.NodeIP != netip.MustParseAddr("10.200.3.1") || s.SliceCIDR != "10.200.3.0/24" || s.OverlayCIDR != "10.200.0.0/16" || s.Interface != "zl-prod-g" {
		t.Fatalf("status %+v", s)
	}
	dev := h.wg.Device("zl-prod-g")
	if dev == nil || dev.ListenPort() != 51820 || dev.PublicKey().String() != s.PublicKey {
		t.Fatalf("device %+v", dev)
	}
	if l, ok := h.net.Link("zl-prod-g"); !ok || !l.Up || len(l.Addrs) != 1 || l.Addrs[0].String() != "10.200.3.1/16" {
		t.Fatalf("device link %+v", l)
	}
	// Idempotent: same request, same device (not re-created), same key.
	h.ok(globalReq("10.200.3.0/24"))
	if h.wg.Device("zl-prod-g") != dev || h.status().PublicKey != s.PublicKey {
		t.Fatal("repeated setup re-created the device or changed the key")
	}
}

func TestGlobalKeyAndSliceSurviveRestartAndTeardown(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq(""))
	before := h.status()
	h.crash()
	after := h.status()
	if after.PublicKey != before.PublicKey || after.NodeIP != before.NodeIP || after.SliceCIDR != before.SliceCIDR {
		t.Fatalf("restart changed identity:\n%+v\n%+v", before, after)
	}
	if h.wg.Device("zl-prod-g") == nil {
		t.Fatal("device not restored at start")
	}
	h.ok(protocol.TeardownGlobalOverlay{})
	if h.wg.Device("zl-prod-g") != nil || h.net.Has("zl-prod-g") {
		t.Fatal("teardown left the device")
	}
	if s := h.status(); s.Interface != "" || s.NodeIP.IsValid() {
		t.Fatalf("status after teardown %+v", s)
	}
	h.ok(protocol.TeardownGlobalOverlay{}) // idempotent
	h.ok(globalReq(""))
	if s := h.status(); s.PublicKey != before.PublicKey || s.NodeIP != before.NodeIP {
		t.Fatal("a setup after teardown must keep the node's key and slice")
	}
}

func TestSelfAssignedSliceIsNotTheSameOnEveryNode(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for range 8 {
		h := newHarness(t)
		h.ok(globalReq(""))
		s := h.status()
		slice := netip.MustParsePrefix(s.SliceCIDR)
		if slice.Bits() != 28 || !netip.MustParsePrefix("10.200.0.0/16").Contains(slice.Addr()) {
			t.Fatalf("self-assigned slice %s", slice)
		}
		first, _ := netip.ParseAddr(slice.Addr().Next().String())
		if s.NodeIP != first {
			t.Fatalf("node IP %s is not the first usable of %s", s.NodeIP, slice)
		}
		seen[s.NodeIP] = true
	}
	// Eight random identities over 4096 slots: all equal would mean the
	// identity is ignored (the reference gave every node 10.200.0.1).
	if len(seen) < 2 {
		t.Fatalf("every node got the same node IP: %v", seen)
	}
}

func TestExplicitSliceReaddressesTheNode(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq(""))
	h.ok(globalReq("10.200.9.0/24"))
	if s := h.status(); s.NodeIP != netip.MustParseAddr("10.200.9.1") || s.SliceCIDR != "10.200.9.0/24" {
		t.Fatalf("not re-addressed: %+v", s)
	}
	if l, _ := h.net.Link("zl-prod-g"); l.Addrs[0].String() != "10.200.9.1/16" {
		t.Fatalf("device address %v", l.Addrs)
	}
	// With addresses of the slice in use, moving is refused.
	h.ok(protocol.AllocateIP{Service: "none"})
	h.fails(globalReq("10.200.10.0/24"), "in use")
}

func TestGlobalBadInput(t *testing.T) {
	h := newHarness(t)
	cases := map[string]protocol.SetupGlobalOverlay{
		"cluster_cidr":      {Deployment: "p", ClusterCIDR: "10.200.0.0/33", WGPort: 1},
		"not inside":        {Deployment: "p", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.9.0.0/24", WGPort: 1},
		"wg_port":           {Deployment: "p", ClusterCIDR: "10.200.0.0/16"},
		"too small":         {Deployment: "p", ClusterCIDR: "10.200.0.0/30", WGPort: 1},
		"deployment":        {Deployment: "", ClusterCIDR: "10.200.0.0/16", WGPort: 1},
		"contains '/'":      {Deployment: "a/b", ClusterCIDR: "10.200.0.0/16", WGPort: 1},
		"private_key":       {Deployment: "p", ClusterCIDR: "10.200.0.0/16", WGPort: 1, PrivateKey: "nope"},
		"at most 63":        {Deployment: strings.Repeat("x", 300), ClusterCIDR: "10.200.0.0/16", WGPort: 1},
		"is not a name":     {Deployment: "..", ClusterCIDR: "10.200.0.0/16", WGPort: 1},
		"contains ' '":      {Deployment: "a b", ClusterCIDR: "10.200.0.0/16", WGPort: 1},
		"contains '\\x01'":  {Deployment: "a\x01", ClusterCIDR: "10.200.0.0/16", WGPort: 1},
		"invalid CIDR":      {Deployment: "p", ClusterCIDR: "banana", WGPort: 1},
		"not inside (fam)":  {Deployment: "p", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "fd00::/64", WGPort: 1},
		"private_key: wire": {Deployment: "p", ClusterCIDR: "10.200.0.0/16", WGPort: 1, PrivateKey: strings.Repeat("ab", 32)},
	}
	for want, req := range cases {
		want = strings.TrimSuffix(strings.TrimSuffix(strings.Split(want, " (")[0], ": wire"), "")
		h.fails(req, want)
	}
	if s := h.status(); s.Interface != "" || len(h.wg.Devices()) != 0 {
		t.Fatal("a refused setup left state behind")
	}
}

func TestAdoptedPrivateKey(t *testing.T) {
	h := newHarness(t)
	k, _ := wg.GenerateKey()
	req := globalReq("10.200.3.0/24")
	req.PrivateKey = k.String()
	h.ok(req)
	if s := h.status(); s.PublicKey != k.PublicKey().String() {
		t.Fatalf("key not adopted: %s", s.PublicKey)
	}
	h.ok(protocol.SetLocalWGPubkey{Pubkey: newKey(t).String()})
	if s := h.status(); !s.PubkeyMismatch || len(s.Warnings) == 0 {
		t.Fatalf("a disagreeing set_local_wg_pubkey must show: %+v", s)
	}
	h.ok(protocol.SetLocalWGPubkey{Pubkey: k.PublicKey().String()})
	if s := h.status(); s.PubkeyMismatch {
		t.Fatal("agreeing keys flagged")
	}
}

func TestServicePlacement(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	web := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	api := h.ok(protocol.SetupServiceOverlay{Service: "api", Mode: "auto"}).(protocol.ServiceOverlay)
	db := h.ok(protocol.SetupServiceOverlay{Service: "db", Mode: "shared", Subnet: "10.201.7.0/24"}).(protocol.ServiceOverlay)
	slice := netip.MustParsePrefix("10.200.3.0/24")
	for _, a := range []protocol.ServiceOverlay{web, api} {
		sub := netip.MustParsePrefix(a.Subnet)
		if !slice.Contains(sub.Addr()) || sub.Bits() != 27 || a.Mode != "shared" {
			t.Fatalf("service not carved from the slice: %+v", a)
		}
		if a.Gateway != sub.Addr().Next() {
			t.Fatalf("gateway %s of %s", a.Gateway, sub)
		}
		if l, ok := h.net.Link(a.Name); !ok || l.Kind != "bridge" || l.Addrs[0] != netip.PrefixFrom(a.Gateway, 27) || l.MTU != 1420 {
			t.Fatalf("bridge %s: %+v", a.Name, l)
		}
	}
	if web.Subnet == api.Subnet {
		t.Fatal("two services got the same subnet")
	}
	if db.Subnet != "10.201.7.0/24" || db.Gateway != netip.MustParseAddr("10.201.7.1") {
		t.Fatalf("explicit subnet not used: %+v", db)
	}
	// The slice pool never hands out an address inside a carved subnet.
	for range 150 {
		ip := h.ok(protocol.AllocateIP{Service: "nope"}).(protocol.IP).IP
		for _, s := range []string{web.Subnet, api.Subnet} {
			if netip.MustParsePrefix(s).Contains(ip) {
				t.Fatalf("slice address %s inside service subnet %s", ip, s)
			}
		}
	}
	// Idempotent re-setup keeps the bridge; a mode switch is refused.
	if again := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay); !reflect.DeepEqual(again, web) {
		t.Fatalf("re-setup changed the answer: %+v vs %+v", again, web)
	}
	h.fails(protocol.SetupServiceOverlay{Service: "web", Mode: "dedicated"}, "tear it down")
	h.fails(protocol.SetupServiceOverlay{Service: "x", Mode: "weird"}, "mode")
	h.fails(protocol.SetupServiceOverlay{Service: "y", Mode: "shared", Subnet: "10.201.7.128/25"}, "overlaps service db")
	h.fails(protocol.SetupServiceOverlay{Service: "../etc", Mode: "shared"}, "service")
	// Teardown releases the subnet: a new service can take it again.
	h.ok(protocol.TeardownServiceOverlay{Service: "db"})
	h.ok(protocol.TeardownServiceOverlay{Service: "db"})
	if h.net.Has(db.Name) {
		t.Fatal("bridge left after teardown")
	}
	h.ok(protocol.SetupServiceOverlay{Service: "db2", Mode: "shared", Subnet: "10.201.7.0/24"})
}

func TestServiceSubnetByHashWhenTheSliceIsFull(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/28"))
	a := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	sub := netip.MustParsePrefix(a.Subnet)
	if sub.Bits() != 28 || sub.Overlaps(netip.MustParsePrefix("10.200.3.0/28")) || !netip.MustParsePrefix("10.200.0.0/16").Contains(sub.Addr()) {
		t.Fatalf("hash-placed subnet %s", sub)
	}
	if s := h.status(); s.Services[0].Subnet != a.Subnet {
		t.Fatalf("status services %+v", s.Services)
	}
}

func TestAllocateReleaseAcrossRestart(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.200.100.0/24"})
	h.ok(protocol.SetupServiceOverlay{Service: "api", Mode: "shared", Subnet: "10.200.101.0/24"})
	held := map[netip.Addr]bool{}
	var order []netip.Addr
	for _, svc := range []string{"web", "api"} {
		for range 20 {
			ip := h.ok(protocol.AllocateIP{Service: svc}).(protocol.IP).IP
			if held[ip] {
				t.Fatalf("%s handed out twice", ip)
			}
			held[ip] = true
			order = append(order, ip)
		}
	}
	released := order[3:8]
	for _, ip := range released {
		h.ok(protocol.ReleaseIP{IP: ip})
		delete(held, ip)
	}
	h.fails(protocol.ReleaseIP{IP: released[0]}, "never allocated")
	before := h.status().Services
	h.crash()
	after := h.status().Services
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("counts changed across restart:\n%v\n%v", before, after)
	}
	for range 40 {
		ip := h.ok(protocol.AllocateIP{Service: "web"}).(protocol.IP).IP
		if held[ip] {
			t.Fatalf("%s handed out while still held", ip)
		}
		held[ip] = true
	}
	// Lowest-free: the released web addresses came back first.
	for _, ip := range released {
		if !held[ip] {
			t.Fatalf("released %s was not reused", ip)
		}
	}
	// What release_ip refuses.
	h.fails(protocol.ReleaseIP{IP: netip.MustParseAddr("10.200.3.1")}, "node's overlay IP")
	h.fails(protocol.ReleaseIP{IP: netip.MustParseAddr("10.200.100.1")}, "gateway of service web")
	h.fails(protocol.ReleaseIP{IP: netip.MustParseAddr("192.0.2.1")}, "none of this node's pools")
	h.fails(protocol.ReleaseIP{IP: netip.MustParseAddr("10.200.100.250")}, "never allocated")
}

func TestAllocateWithoutAnything(t *testing.T) {
	h := newHarness(t)
	h.fails(protocol.AllocateIP{Service: "web"}, "setup_global_overlay")
	h.ok(globalReq("10.200.3.0/30"))
	// A /30 slice: the node IP and one more address, then exhaustion.
	h.ok(protocol.AllocateIP{Service: "x"})
	h.fails(protocol.AllocateIP{Service: "x"}, "no free address", "10.200.3.0/30")
}

func TestAttachDetachContainer(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	svc := h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}).(protocol.ServiceOverlay)
	h.procs.Add(4242)
	att := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(4242), Service: "web", JoinGlobal: true}).(protocol.Attached)
	if !netip.MustParsePrefix(svc.Subnet).Contains(att.IP) || att.IP == svc.Gateway {
		t.Fatalf("container IP %s not in %s", att.IP, svc.Subnet)
	}
	if !netip.MustParsePrefix("10.200.3.0/24").Contains(att.GlobalIP) {
		t.Fatalf("global IP %s", att.GlobalIP)
	}
	eth0, ok0 := h.net.Link("zl-v4242-e0")
	eth1, ok1 := h.net.Link("zl-v4242-e1")
	if !ok0 || eth0.Master != svc.Name || eth0.Spec.Gateway != svc.Gateway || eth0.Spec.IfName != "eth0" || eth0.MTU != 1420 {
		t.Fatalf("eth0 %+v", eth0)
	}
	if !ok1 || !eth1.Spec.HostRoute || eth1.Spec.Routes[0].Via != netip.MustParseAddr("10.200.3.1") || eth1.Spec.Addr.Bits() != 32 {
		t.Fatalf("eth1 %+v", eth1)
	}
	if !strings.HasPrefix(eth0.Alias, linkAliasPrefix) {
		t.Fatalf("veth not labelled as ours: %q", eth0.Alias)
	}
	// Same PID again: same IP, no second veth.
	n := h.net.Attaches()
	again := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(4242), Service: "web", JoinGlobal: true}).(protocol.Attached)
	if again.IP != att.IP || len(h.net.Veths()) != 2 {
		t.Fatalf("repeat attach: %+v, veths %v", again, h.net.Veths())
	}
	_ = n
	h.ok(protocol.DetachContainer{Handle: protocol.LinuxPID(4242)})
	h.e.bg.Wait()
	if len(h.net.Veths()) != 0 {
		t.Fatalf("detach left %v", h.net.Veths())
	}
	if s := h.status(); len(s.Attachments) != 0 || s.Services[0].Used != 1 || s.SlicePool.Used != 1 {
		t.Fatalf("detach left state: %+v %+v", s.Attachments, s.Services)
	}
	h.ok(protocol.DetachContainer{Handle: protocol.LinuxPID(4242)}) // unknown = ok
	h.ok(protocol.DetachContainer{Handle: protocol.WindowsContainer("x", netip.Addr{})})
}

func TestAttachErrors(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.fails(protocol.AttachContainer{Handle: protocol.LinuxPID(999), Service: "web"}, "process 999 does not exist")
	h.procs.Add(7)
	h.fails(protocol.AttachContainer{Handle: protocol.LinuxPID(7), Service: "nope"}, "setup_service_overlay")
	h.fails(protocol.AttachContainer{Handle: protocol.WindowsContainer("c", netip.Addr{}), Service: "web"}, "Windows")
	h.fails(protocol.AttachContainer{Handle: protocol.LinuxPID(0), Service: "web"}, "not a Linux process id")
	h.fails(protocol.AttachContainer{Handle: protocol.LinuxPID(maxPID + 1), Service: "web"}, "not a Linux process id")
	if len(h.net.Veths()) != 0 {
		t.Fatal("failed attaches left links")
	}
}

func TestAttachRollsBackEveryStep(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	before := h.status()
	h.procs.Add(50)
	// eth1 fails: eth0 must go too, and both addresses come back.
	h.net.FailAttach(func(s linuxnet.AttachSpec) error {
		if s.IfName == "eth1" {
			return fmt.Errorf("injected failure on eth1")
		}
		return nil
	})
	h.fails(protocol.AttachContainer{Handle: protocol.LinuxPID(50), Service: "web", JoinGlobal: true}, "injected failure")
	h.net.FailAttach(nil)
	if v := h.net.Veths(); len(v) != 0 {
		t.Fatalf("eth1 failure left %v", v)
	}
	if s := h.status(); fmt.Sprint(before.Services, before.SlicePool) != fmt.Sprint(s.Services, s.SlicePool) {
		t.Fatalf("eth1 failure leaked addresses: %v %v", s.Services, s.SlicePool)
	}
	// The process exits between the links and the commit.
	calls := 0
	h.procs.OnStart(func(pid int) {
		calls++
		if calls == 2 {
			go h.procs.Kill(pid)
			time.Sleep(10 * time.Millisecond)
		}
	})
	h.fails(protocol.AttachContainer{Handle: protocol.LinuxPID(50), Service: "web", JoinGlobal: true}, "exited during the attach")
	h.procs.OnStart(nil)
	after := h.status()
	if len(h.net.Veths()) != 0 || fmt.Sprint(before.Services, before.SlicePool) != fmt.Sprint(after.Services, after.SlicePool) || len(after.Attachments) != 0 {
		t.Fatalf("rollback incomplete: veths %v\nbefore %v %v\nafter %v %v", h.net.Veths(), before.Services, before.SlicePool, after.Services, after.SlicePool)
	}
	h.crash()
	if s := h.status(); len(s.Attachments) != 0 || fmt.Sprint(s.Services) != fmt.Sprint(before.Services) {
		t.Fatal("a failed attach reached the store")
	}
}

func TestReconcileReleasesDeadContainersAndRepairsLinks(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	for _, pid := range []int{10, 11, 12} {
		h.procs.Add(pid)
		h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web", JoinGlobal: pid == 12})
	}
	// 10 dies (its namespace and veth with it); 11's link was deleted by
	// someone; 12 is fine.
	h.procs.Kill(10)
	h.net.KillContainer(10)
	h.net.DeleteLink("zl-v11-e0")
	// A link labelled ours that nothing wants, and a foreign one.
	h.net.AddLink("zl-v999-e0", enginetest.Link{Kind: "veth", Alias: h.e.linkAlias("veth", "linux_pid:999"), Spec: &linuxnet.AttachSpec{PID: 999}})
	h.net.AddLink("zl-foreign", enginetest.Link{Kind: "bridge"})
	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.e.bg.Wait()
	s := h.status()
	if len(s.Attachments) != 2 {
		t.Fatalf("attachments after reconcile: %+v", s.Attachments)
	}
	got := h.net.Veths()
	want := []string{"zl-v11-e0", "zl-v12-e0", "zl-v12-e1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("veths %v, want %v", got, want)
	}
	if !h.net.Has("zl-foreign") {
		t.Fatal("reconcile deleted a link that is not ours")
	}
	// A new container takes the dead one's address only now that it is free.
	h.procs.Add(13)
	h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(13), Service: "web"})
}

func TestPIDReuseIsNotTheSameContainer(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	h.procs.Add(77)
	first := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(77), Service: "web"}).(protocol.Attached)
	h.procs.Kill(77)
	h.net.KillContainer(77)
	time.Sleep(time.Millisecond)
	h.procs.Add(77) // a new process got the PID
	second := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(77), Service: "web"}).(protocol.Attached)
	h.e.bg.Wait()
	if s := h.status(); len(s.Attachments) != 1 || s.Services[0].Used != 2 {
		t.Fatalf("the old attachment was not replaced: %+v %+v (%s, %s)", s.Attachments, s.Services, first.IP, second.IP)
	}
}

func TestContainersSurviveARestart(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	ips := map[int]netip.Addr{}
	for _, pid := range []int{20, 21} {
		h.procs.Add(pid)
		ips[pid] = h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web", JoinGlobal: true}).(protocol.Attached).IP
	}
	n := h.net.Attaches()
	h.crash()
	if h.net.Attaches() != n {
		t.Fatal("restart re-created intact container links")
	}
	s := h.status()
	if len(s.Attachments) != 2 {
		t.Fatalf("attachments after restart %+v", s.Attachments)
	}
	for _, a := range s.Attachments {
		if ips[int(a.Handle.PID)] != a.IP {
			t.Fatalf("address changed across restart: %+v", a)
		}
	}
	// The same attach after the restart is idempotent.
	if got := h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(20), Service: "web", JoinGlobal: true}).(protocol.Attached).IP; got != ips[20] {
		t.Fatalf("re-attach after restart gave %s, want %s", got, ips[20])
	}
}

func TestManyAttachesAndDetachesLeaveNothing(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.210.0.0/22"})
	base := h.status()
	for pid := 1000; pid < 1200; pid++ {
		h.procs.Add(pid)
		h.ok(protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web"})
	}
	if len(h.net.Veths()) != 200 {
		t.Fatalf("%d veths", len(h.net.Veths()))
	}
	for pid := 1000; pid < 1200; pid++ {
		h.ok(protocol.DetachContainer{Handle: protocol.LinuxPID(uint32(pid))})
	}
	h.e.bg.Wait()
	s := h.status()
	if len(h.net.Veths()) != 0 || len(s.Attachments) != 0 || s.Services[0].Used != base.Services[0].Used {
		t.Fatalf("left behind: veths %d attachments %d used %d", len(h.net.Veths()), len(s.Attachments), s.Services[0].Used)
	}
	loaded, _ := h.st.Load()
	if len(loaded.Allocations) != 2 { // node IP and gateway
		t.Fatalf("allocations left in the store: %+v", loaded.Allocations)
	}
}

func TestPeers(t *testing.T) {
	h := newHarness(t)
	pub := newKey(t).String()
	add := protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32, 10.200.8.0/24", PersistentKeepaliveSecs: 25}}
	h.fails(add, "global overlay not set up")
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(add)
	dev := h.wg.Device("zl-prod-g")
	k, _ := wg.ParseKey(pub)
	p := dev.Peer(k)
	if p == nil || p.Endpoint.String() != "192.0.2.10:51820" || len(p.AllowedIPs) != 2 || p.PersistentKeepaliveInterval != 25*time.Second {
		t.Fatalf("peer %+v", p)
	}
	// Upsert in place: same peer object, new endpoint and keepalive.
	add.Endpoint, add.PersistentKeepaliveSecs = "192.0.2.11:51821", 10
	h.ok(add)
	if q := dev.Peer(k); q != p || q.Endpoint.String() != "192.0.2.11:51821" || q.PersistentKeepaliveInterval != 10*time.Second {
		t.Fatalf("not updated in place: %+v", q)
	}
	// Allowed IP set semantics, idempotent both ways.
	for range 2 {
		h.ok(protocol.AddAllowedIP{Pubkey: pub, CIDR: "10.200.46.224/28"})
	}
	if len(dev.Peer(k).AllowedIPs) != 3 {
		t.Fatalf("allowed IPs %v", dev.Peer(k).AllowedIPs)
	}
	for range 2 {
		h.ok(protocol.RemoveAllowedIP{Pubkey: pub, CIDR: "10.200.46.224/28"})
	}
	if len(dev.Peer(k).AllowedIPs) != 2 {
		t.Fatalf("allowed IPs %v", dev.Peer(k).AllowedIPs)
	}
	other := newKey(t).String()
	h.fails(protocol.AddAllowedIP{Pubkey: other, CIDR: "10.0.0.0/8"}, "unknown peer")
	h.ok(protocol.RemoveAllowedIP{Pubkey: other, CIDR: "10.0.0.0/8"})
	h.ok(protocol.RemovePeer{Pubkey: other})
	// Bad input.
	h.fails(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: "short", Endpoint: "1.2.3.4:1", AllowedIPs: "10.0.0.1/32"}}, "public_key")
	h.fails(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "1.2.3.4:1", AllowedIPs: "10.0.0.1/33"}}, "allowed IP")
	h.fails(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "no-port", AllowedIPs: "10.0.0.1/32"}}, "endpoint")
	h.fails(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "nx.invalid:51820", AllowedIPs: "10.0.0.1/32"}}, "does not resolve")
	h.fails(protocol.AddAllowedIP{Pubkey: pub, CIDR: "nope"}, "cidr")
	// The reference's exact message for a service scope without device.
	if msg := h.fails(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "1.2.3.4:1"}, Scope: protocol.ServiceScope("x")}); msg != "no dedicated overlay for service x" {
		t.Fatalf("message %q", msg)
	}
	// Persisted: a restart restores the peer with its allowed IPs.
	h.crash()
	dev = h.wg.Device("zl-prod-g")
	if q := dev.Peer(k); q == nil || len(q.AllowedIPs) != 2 || q.Endpoint.String() != "192.0.2.11:51821" {
		t.Fatalf("peer after restart %+v", q)
	}
	h.ok(protocol.RemovePeer{Pubkey: pub})
	if dev.PeerCount() != 0 {
		t.Fatal("remove_peer left the peer")
	}
}

func TestPeerRoutesOutsideTheCluster(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	pub := newKey(t).String()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "192.0.2.1:1", AllowedIPs: "10.200.9.0/24,172.16.5.0/24,0.0.0.0/0"}})
	rs, _ := h.net.Routes("zl-prod-g")
	if len(rs) != 1 || rs[0].Dst.String() != "172.16.5.0/24" {
		t.Fatalf("routes %+v: want only the allowed IP outside the cluster (never a default route)", rs)
	}
	h.ok(protocol.RemovePeer{Pubkey: pub})
	if rs, _ := h.net.Routes("zl-prod-g"); len(rs) != 0 {
		t.Fatalf("routes left %+v", rs)
	}
}

func TestDedicatedService(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	d := h.ok(protocol.SetupServiceOverlay{Service: "db", Mode: "dedicated"}).(protocol.ServiceOverlay)
	if d.Mode != "dedicated" || d.WGPort != 51821 || d.WGPublicKey == "" || !d.OverlayIP.IsValid() || d.Subnet == "" {
		t.Fatalf("answer %+v", d)
	}
	dev := h.wg.Device(d.Name)
	if dev == nil || dev.ListenPort() != 51821 || dev.PublicKey().String() != d.WGPublicKey {
		t.Fatalf("dedicated device %+v", dev)
	}
	d2 := h.ok(protocol.SetupServiceOverlay{Service: "db2", Mode: "dedicated"}).(protocol.ServiceOverlay)
	if d2.WGPort != 51822 || d2.Name == d.Name || d2.WGPublicKey == d.WGPublicKey {
		t.Fatalf("second dedicated %+v", d2)
	}
	pub := newKey(t).String()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "192.0.2.1:51821", AllowedIPs: "10.200.77.0/28"}, Scope: protocol.ServiceScope("db")})
	h.ok(protocol.AddAllowedIP{Pubkey: pub, CIDR: "10.200.77.0/28", Scope: protocol.ServiceScope("db")})
	if rs, _ := h.net.Routes(d.Name); len(rs) != 1 || rs[0].Dst.String() != "10.200.77.0/28" {
		t.Fatalf("dedicated routes %+v", rs)
	}
	s := h.status()
	if len(s.DedicatedServices) != 2 || s.DedicatedServices[0].PeerCount != 1 || s.DedicatedServices[0].ListenPort != 51821 {
		t.Fatalf("status %+v", s.DedicatedServices)
	}
	h.crash()
	if dev := h.wg.Device(d.Name); dev == nil || dev.ListenPort() != 51821 || dev.PublicKey().String() != d.WGPublicKey || dev.PeerCount() != 1 {
		t.Fatalf("dedicated device after restart %+v", dev)
	}
	h.ok(protocol.TeardownServiceOverlay{Service: "db"})
	if h.wg.Device(d.Name) != nil || h.net.Has(d.Name) {
		t.Fatal("dedicated device left after teardown")
	}
	if msg := h.fails(protocol.RemovePeer{Pubkey: pub, Scope: protocol.ServiceScope("db")}); msg != "no dedicated overlay for service db" {
		t.Fatalf("%q", msg)
	}
}

func TestGuestAttach(t *testing.T) {
	h := newHarness(t)
	h.fails(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web"}, "global overlay to be set up")
	h.ok(globalReq("10.200.3.0/24"))
	gc := h.ok(protocol.AttachContainer{Handle: protocol.GuestManaged("vm-1"), Service: "web", DNSServer: netip.MustParseAddr("10.200.3.1"), DNSDomain: "prod.local"}).(protocol.GuestConfig)
	node := h.status()
	if !netip.MustParsePrefix("10.200.3.0/24").Contains(gc.OverlayIP) || gc.PrefixLen != 16 || gc.ListenPort != 51820 || gc.PrivateKey == "" || gc.PublicKey == gc.PrivateKey {
		t.Fatalf("guest config %+v", gc)
	}
	if len(gc.Peers) != 1 || gc.Peers[0].PublicKey != node.PublicKey || gc.Peers[0].AllowedIPs != "10.200.0.0/16" || gc.Peers[0].Endpoint != "10.200.3.1:51820" {
		t.Fatalf("guest's peer %+v", gc.Peers)
	}
	priv, _ := wg.ParseKey(gc.PrivateKey)
	if priv.PublicKey().String() != gc.PublicKey {
		t.Fatal("guest keypair does not match")
	}
	dev := h.wg.Device("zl-prod-g")
	gk, _ := wg.ParseKey(gc.PublicKey)
	if p := dev.Peer(gk); p == nil || p.AllowedIPs[0].String() != gc.OverlayIP.String()+"/32" {
		t.Fatalf("guest not registered as a peer: %+v", p)
	}
	h.ok(protocol.DetachContainer{Handle: protocol.GuestManaged("vm-1")})
	if dev.PeerCount() != 0 || h.status().SlicePool.Used != 1 {
		t.Fatal("guest detach left its peer or address")
	}
	h.ok(protocol.DetachContainer{Handle: protocol.GuestManaged("vm-1")})
}

func TestHealthAndEndpointEvents(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	pk := newKey(t)
	pub := pk.String()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}})
	dev := h.wg.Device("zl-prod-g")
	now := time.Now()
	h.e.checkPeers(now)
	dev.Handshake(pk, now, "")
	h.e.checkPeers(now)
	// 2 × 25 s + 10 s without a handshake: down.
	h.e.checkPeers(now.Add(61 * time.Second))
	// The peer roams: WireGuard learns a new endpoint with a fresh handshake.
	dev.Handshake(pk, now.Add(70*time.Second), "198.51.100.7:40123")
	h.e.checkPeers(now.Add(71 * time.Second))
	h.mu.Lock()
	got := fmt.Sprint(h.events)
	h.mu.Unlock()
	want := fmt.Sprint([]protocol.Event{
		protocol.PeerHealthChanged{Pubkey: pub, Healthy: true},
		protocol.PeerHealthChanged{Pubkey: pub, Healthy: false},
		protocol.PeerHealthChanged{Pubkey: pub, Healthy: true},
		protocol.NATEndpointChanged{Pubkey: pub, Endpoint: "198.51.100.7:40123"},
	})
	if got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
	// The learned endpoint is kept: an add_peer repeating the old endpoint
	// and a restart do not put the old one back.
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}})
	if ep := dev.Peer(pk).Endpoint.String(); ep != "198.51.100.7:40123" {
		t.Fatalf("add_peer with the old endpoint fought the learned one: %s", ep)
	}
	h.crash()
	if ep := h.wg.Device("zl-prod-g").Peer(pk).Endpoint.String(); ep != "198.51.100.7:40123" {
		t.Fatalf("restart fought the learned endpoint: %s", ep)
	}
	// A really new endpoint in a request wins.
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pub, Endpoint: "192.0.2.99:51820", AllowedIPs: "10.200.7.1/32"}})
	if ep := h.wg.Device("zl-prod-g").Peer(pk).Endpoint.String(); ep != "192.0.2.99:51820" {
		t.Fatalf("a changed endpoint in add_peer was ignored: %s", ep)
	}
}

func TestRequestsAfterShutdownAreRefused(t *testing.T) {
	h := newHarness(t)
	h.ok(protocol.Shutdown{})
	select {
	case <-h.e.ShutdownRequested():
	default:
		t.Fatal("shutdown not signalled")
	}
	h.fails(protocol.Status{}, "shutting down")
}

// Keepalives are not handshakes: on a healthy link the handshake age
// cycles up to two minutes, so health with a keepalive must follow the
// receive counter, not flap every cycle.
func TestHealthFollowsTrafficNotHandshakeAge(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	pk := newKey(t)
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: pk.String(), Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.7.1/32", PersistentKeepaliveSecs: 25}})
	dev := h.wg.Device("zl-prod-g")
	t0 := time.Now()
	dev.Handshake(pk, t0, "")
	for sec := 0; sec <= 150; sec += 5 {
		dev.Receive(pk, 32) // a keepalive arrived
		h.e.checkPeers(t0.Add(time.Duration(sec) * time.Second))
	}
	h.mu.Lock()
	n := len(h.events)
	h.mu.Unlock()
	if n != 1 {
		t.Fatalf("a link with steady keepalives flapped: %d events", n)
	}
	// Traffic stops: down after 2 × 25 s + 10 s.
	h.e.checkPeers(t0.Add(150*time.Second + 59*time.Second))
	h.e.checkPeers(t0.Add(150*time.Second + 61*time.Second))
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.events) != 2 || h.events[1] != (protocol.PeerHealthChanged{Pubkey: pk.String(), Healthy: false}) {
		t.Fatalf("events %v", h.events)
	}
}

func TestCarveBits(t *testing.T) {
	e := &Engine{}
	for _, c := range []struct {
		slice string
		want  int
	}{
		{"10.200.3.0/24", 27}, {"10.200.0.0/20", 24}, {"10.0.0.0/8", 24}, {"10.200.3.0/26", 28}, {"10.200.3.0/28", 28},
		{"fd00::/112", 115}, {"fd00::/64", 104}, {"fd00::/118", 120},
	} {
		if got := e.carveBits(netip.MustParsePrefix(c.slice)); got != c.want {
			t.Errorf("carveBits(%s) = %d, want %d", c.slice, got, c.want)
		}
	}
	e.cfg.ServiceBits = 26
	if got := e.carveBits(netip.MustParsePrefix("10.200.3.0/24")); got != 26 {
		t.Errorf("--service-prefix not honoured: %d", got)
	}
}

// A refused service setup names what is wrong and leaves no service, bridge
// or address behind, so the same name can be set up properly afterwards.
func TestServiceSetupRefusalsNameTheProblemAndLeaveNothing(t *testing.T) {
	before := newHarness(t)
	for _, c := range []struct {
		req  protocol.SetupServiceOverlay
		want string
	}{
		{protocol.SetupServiceOverlay{Service: "web", Mode: "dedicated"}, "setup_global_overlay first"},
		{protocol.SetupServiceOverlay{Service: "web", Mode: "shared"}, "setup_global_overlay first"},
	} {
		before.fails(c.req, c.want)
	}
	if s := before.status(); s.ServiceCount != 0 || len(s.Services) != 0 {
		t.Fatalf("a refused setup left a service: %+v", s.Services)
	}

	h := newHarness(t)
	h.ok(globalReq(""))
	linksBefore, err := h.net.Links("")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req  protocol.SetupServiceOverlay
		want string
	}{
		{protocol.SetupServiceOverlay{Service: "", Mode: "shared"}, "service is empty"},
		{protocol.SetupServiceOverlay{Service: "web", Mode: "private"}, `mode "private" is not auto, shared or dedicated`},
		{protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.200.9.0"}, "10.200.9.0"},
		{protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.200.9.0/31"}, "10.200.9.0/31 is too small"},
		{protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "fd00:9::/127"}, "fd00:9::/127 is too small"},
		{protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.200.9.0/24,10.200.10.0/24"}, "two prefixes of one family"},
	} {
		h.fails(c.req, c.want)
	}
	if s := h.status(); s.ServiceCount != 0 || len(s.Services) != 0 {
		t.Fatalf("a refused setup left a service: %+v", s.Services)
	}
	linksAfter, err := h.net.Links("")
	if err != nil {
		t.Fatal(err)
	}
	if len(linksAfter) != len(linksBefore) {
		t.Fatalf("refused setups left links: before %+v, after %+v", linksBefore, linksAfter)
	}
	// The name is still free: the same service comes up when asked properly.
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared", Subnet: "10.200.9.0/24"})
	if s := h.status(); s.ServiceCount != 1 {
		t.Fatalf("service count %d after a good setup", s.ServiceCount)
	}
}

// A service set up with an explicit subnet inside the node slice takes it
// out of the slice pool; after a restart allocate_ip must still not hand
// out its addresses.
func TestExplicitSubnetInTheSliceStaysOutOfThePoolAfterRestart(t *testing.T) {
	h := newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	subnet := netip.MustParsePrefix("10.200.3.128/26")
	h.ok(protocol.SetupServiceOverlay{Service: "api", Mode: "shared", Subnet: subnet.String()})
	h.crash()
	if ip, handed := h.drainSlice(subnet.Contains); handed {
		t.Fatalf("after a restart allocate_ip handed out %s, inside %s, the subnet of service api", ip, subnet)
	}
}

// A node whose store holds a slice address inside such a subnet (handed
// out by an older version after a restart) still starts, keeps the
// allocation (its holder may use it), and never hands the address out
// again.
func TestSliceAllocationInsideAnExplicitSubnetSurvivesTheUpgrade(t *testing.T) {
	h, subnet, stale := startWithKeptSliceAllocation(t)
	if ip, handed := h.drainSlice(subnet.Contains); handed {
		t.Fatalf("allocate_ip handed out %s, inside %s, the subnet of service api", ip, subnet)
	}
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(loaded.Allocations, func(a store.Allocation) bool { return a.Pool == poolSlice && a.Addr == stale.String() }) {
		t.Fatalf("the start dropped the stored allocation of %s", stale)
	}
	// The main daemon repeats the global setup at every start, and the
	// service may go: the kept address stays taken through both.
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.TeardownServiceOverlay{Service: "api"})
	h.e.bg.Wait()
	if _, handed := h.drainSlice(func(a netip.Addr) bool { return a == stale }); handed {
		t.Fatalf("allocate_ip handed out %s a second time once api was torn down", stale)
	}
}

// The holder of such a kept allocation gives it back with release_ip like
// any other: the address lies in the service's range, but the allocation
// is the slice's, and once the service is gone the slice hands it out
// again instead of holding it for nobody.
func TestKeptSliceAllocationInsideAnExplicitSubnetCanBeReleased(t *testing.T) {
	h, _, stale := startWithKeptSliceAllocation(t)
	h.ok(protocol.ReleaseIP{IP: stale})
	loaded, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(loaded.Allocations, func(a store.Allocation) bool { return a.Addr == stale.String() }) {
		t.Fatalf("release_ip answered ok but the store still holds %s", stale)
	}
	h.fails(protocol.ReleaseIP{IP: stale}, "never allocated here")
	h.ok(protocol.TeardownServiceOverlay{Service: "api"})
	h.e.bg.Wait()
	if _, handed := h.drainSlice(func(a netip.Addr) bool { return a == stale }); !handed {
		t.Fatalf("%s was released and its service torn down, yet the slice never hands it out again", stale)
	}
}

// startWithKeptSliceAllocation is a node restarted on a store an older
// version wrote: service api has the explicit subnet 10.200.3.128/26 inside
// the node slice, and the slice handed out 10.200.3.130 from it.
func startWithKeptSliceAllocation(t *testing.T) (h *harness, subnet netip.Prefix, stale netip.Addr) {
	t.Helper()
	h = newHarness(t)
	h.ok(globalReq("10.200.3.0/24"))
	subnet = netip.MustParsePrefix("10.200.3.128/26")
	h.ok(protocol.SetupServiceOverlay{Service: "api", Mode: "shared", Subnet: subnet.String()})
	stale = netip.MustParseAddr("10.200.3.130")
	if err := h.st.Update(func(tx *store.Tx) error {
		return tx.PutAllocation(store.Allocation{Pool: poolSlice, Addr: stale.String(), Owner: ownerAPI})
	}); err != nil {
		t.Fatal(err)
	}
	h.crash()
	return h, subnet, stale
}
