package enginetest_test

import (
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The package must not import engine (its internal tests use it), so the
// interfaces are only checked here.
var (
	_ engine.Network   = (*enginetest.Net)(nil)
	_ engine.Processes = (*enginetest.Procs)(nil)
	_ wg.Backend       = (*enginetest.WG)(nil)
	_ wg.Device        = (*enginetest.Device)(nil)
)

func TestAttachIsIdempotentAndKillContainerRemovesItsVeths(t *testing.T) {
	n := enginetest.NewNet()
	gw := netip.MustParsePrefix("10.0.0.1/24")
	if err := n.EnsureBridge(linuxnet.BridgeSpec{Name: "br", Gateway: gw, MTU: 1420}); err != nil {
		t.Fatal(err)
	}
	spec := linuxnet.AttachSpec{PID: 7, HostName: "v7", Bridge: "br", Addr: netip.MustParsePrefix("10.0.0.7/24"),
		HostRoute: true, HostRouteSrc: netip.MustParseAddr("10.0.0.1")}
	for range 2 {
		if err := n.Attach(spec); err != nil {
			t.Fatal(err)
		}
	}
	if l, ok := n.Link("v7"); !ok || l.Master != "br" || l.Spec == nil || l.Spec.PID != 7 || n.Attaches() != 2 {
		t.Fatalf("veth %+v %v after %d attaches", l, ok, n.Attaches())
	}
	if rs, _ := n.Routes("v7"); len(rs) != 1 || rs[0].Src != spec.HostRouteSrc {
		t.Fatalf("host route %+v", rs)
	}
	if err := n.Attach(linuxnet.AttachSpec{PID: 8, HostName: "br"}); err == nil {
		t.Fatal("attach over a bridge succeeded")
	}
	n.FailAttach(func(linuxnet.AttachSpec) error { return errors.New("injected") })
	if err := n.Attach(linuxnet.AttachSpec{PID: 9, HostName: "v9"}); err == nil || n.Has("v9") {
		t.Fatalf("injected failure: %v", err)
	}
	n.FailAttach(nil)
	n.KillContainer(7)
	if got := n.Veths(); len(got) != 0 {
		t.Fatalf("veths after the container died: %v", got)
	}
}

func TestConfigureUpsertsPeersInPlace(t *testing.T) {
	n := enginetest.NewNet()
	b := enginetest.NewWG(n, wg.KindUserspace)
	dev, err := b.Open("wg0", wg.Options{MTU: 1420})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open("wg0", wg.Options{}); err == nil {
		t.Fatal("a second open of the same name succeeded")
	}
	if l, ok := n.Link("wg0"); !ok || l.Kind != "tun" || l.MTU != 1420 {
		t.Fatalf("device link %+v %v", l, ok)
	}
	priv, _ := wgtypes.GeneratePrivateKey()
	pk := priv.PublicKey()
	a, c := netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")
	peer := func(ips ...netip.Prefix) wgtypes.PeerConfig {
		pc := wgtypes.PeerConfig{PublicKey: pk, ReplaceAllowedIPs: true}
		for _, p := range ips {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
		}
		return pc
	}
	if err := dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{peer(a)}, ReplacePeers: true}); err != nil {
		t.Fatal(err)
	}
	d := b.Device("wg0")
	first := d.Peer(pk)
	d.Receive(pk, 32)
	if err := dev.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{peer(a, c)}, ReplacePeers: true}); err != nil {
		t.Fatal(err)
	}
	if p := d.Peer(pk); p != first || len(p.AllowedIPs) != 2 || p.ReceiveBytes != 32 {
		t.Fatalf("peer not updated in place: %+v", p)
	}
	if err := dev.Configure(wgtypes.Config{ReplacePeers: true}); err != nil || d.PeerCount() != 0 {
		t.Fatalf("replace with no peers: %v, %d left", err, d.PeerCount())
	}
	dev.Close()
	dev.Close()
	if b.Device("wg0") != nil || n.Has("wg0") || dev.Configure(wgtypes.Config{}) == nil {
		t.Fatal("a closed device is still there")
	}
}

func TestAReusedPIDIsAnotherProcess(t *testing.T) {
	p := enginetest.NewProcs()
	p.Add(5)
	first, err := p.StartTime(5)
	if err != nil {
		t.Fatal(err)
	}
	p.Kill(5)
	if _, err := p.NetnsInode(5); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a killed process: %v", err)
	}
	p.Add(5)
	var seen []int
	p.OnStart(func(pid int) { seen = append(seen, pid) })
	if second, err := p.StartTime(5); err != nil || second == first || !slices.Equal(seen, []int{5}) {
		t.Fatalf("start times %d and %d (%v), hook saw %v", first, second, err, seen)
	}
}
