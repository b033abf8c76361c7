package wg

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// kernelHasWireGuard asks ip(8), an independent observer, whether this
// kernel can create a wireguard link. ok is false when it cannot tell.
func kernelHasWireGuard(t *testing.T) (has, ok bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		return false, false
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return false, false
	}
	name := "zltw" + randHex(t, 4) + "k"
	out, err := exec.Command("ip", "link", "add", name, "type", "wireguard").CombinedOutput()
	if err == nil {
		exec.Command("ip", "link", "del", name).Run()
		return true, true
	}
	return false, strings.Contains(string(out), "Unknown device type") || strings.Contains(string(out), "not supported")
}

func TestNewBackendAuto(t *testing.T) {
	var logs bytes.Buffer
	b, err := NewBackend("auto", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("log: %s", strings.TrimSpace(logs.String()))
	has, known := kernelHasWireGuard(t)
	switch {
	case has:
		if b.Kind() != KindKernel {
			t.Errorf("kernel supports WireGuard but auto picked %q", b.Kind())
		}
	case os.Geteuid() != 0:
		if b.Kind() != KindUserspace || !strings.Contains(logs.String(), "not permitted") {
			t.Errorf("unprivileged auto picked %q with log %q; want userspace because the probe was not permitted", b.Kind(), logs.String())
		}
	case known:
		if b.Kind() != KindUserspace {
			t.Errorf("kernel has no WireGuard but auto picked %q", b.Kind())
		}
		for _, want := range []string{"backend=userspace", "no WireGuard support", "wireguard-go"} {
			if !strings.Contains(logs.String(), want) {
				t.Errorf("log does not say %q: %s", want, logs.String())
			}
		}
	default:
		t.Skip("cannot tell independently whether this kernel has WireGuard")
	}
}

// With a need for its own packets on the WireGuard port, auto picks
// userspace, and says why when the kernel could have been used.
func TestNewBackendAutoWithOwnBindPicksUserspace(t *testing.T) {
	var logs bytes.Buffer
	b, err := NewBackendFor("auto", Needs{OwnBind: true}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("log: %s", strings.TrimSpace(logs.String()))
	if b.Kind() != KindUserspace {
		t.Fatalf("auto with a Bind of its own picked %q", b.Kind())
	}
	if has, _ := kernelHasWireGuard(t); has && !strings.Contains(logs.String(), "the kernel can create wireguard links, but NAT traversal") {
		t.Errorf("log does not say why kernel WireGuard was passed over: %s", logs.String())
	}
}

// The kernel backend refuses a Bind rather than ignore it: what the Bind
// carries besides WireGuard (STUN, TURN) could never flow.
func TestKernelOpenRefusesABind(t *testing.T) {
	_, err := kernelBackend{}.Open("zltwbind", Options{Bind: conn.NewDefaultBind(), Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "cannot use a custom Bind") || !strings.Contains(err.Error(), "--wireguard userspace") {
		t.Fatalf("err = %v", err)
	}
}

func TestNewBackendKernel(t *testing.T) {
	b, err := NewBackend("kernel", slog.New(slog.DiscardHandler))
	has, known := kernelHasWireGuard(t)
	switch {
	case has:
		if err != nil || b.Kind() != KindKernel {
			t.Errorf("kernel supports WireGuard but NewBackend(kernel) = %v, %v", b, err)
		}
	case os.Geteuid() != 0:
		if err == nil || !strings.Contains(err.Error(), "not permitted") {
			t.Errorf("unprivileged NewBackend(kernel) err = %v, want not permitted", err)
		}
	case known:
		if err == nil {
			t.Fatalf("kernel has no WireGuard but NewBackend(kernel) succeeded")
		}
		for _, want := range []string{`backend "kernel" requested`, "no WireGuard support", `use "userspace"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	default:
		t.Skip("cannot tell independently whether this kernel has WireGuard")
	}
}

func TestCheckAdoptable(t *testing.T) {
	attrs := func(name, alias string) netlink.LinkAttrs {
		la := netlink.NewLinkAttrs()
		la.Name, la.Alias = name, alias
		return la
	}
	const (
		owner = "zlayer-overlayd:0123456789ab:"
		other = "zlayer-overlayd:ba9876543210:"
	)
	for _, ok := range []struct {
		name, alias, owner string
	}{
		{"our label", owner + "wireguard:zl-prod-g", owner},
		{"bare mark of an interrupted creation", ownerAlias, owner},
		{"any identity without an owner", other + "wireguard:zl-prod-g", ""},
		{"bare mark without an owner", ownerAlias, ""},
	} {
		t.Run("adopts "+ok.name, func(t *testing.T) {
			if err := checkAdoptable(&netlink.Wireguard{LinkAttrs: attrs("zl-prod-g", ok.alias)}, ok.owner); err != nil {
				t.Errorf("refused: %v", err)
			}
		})
	}
	for _, tt := range []struct {
		name  string
		link  netlink.Link
		owner string
		want  []string
	}{
		{"wireguard link of someone else", &netlink.Wireguard{LinkAttrs: attrs("wg0", "")}, "", []string{"was not created by zlayer-overlayd"}},
		{"wireguard link with another alias", &netlink.Wireguard{LinkAttrs: attrs("wg0", "corp vpn")}, owner, []string{`its alias is "corp vpn"`}},
		{"TUN with our alias", &netlink.Tuntap{LinkAttrs: attrs("zl-overlay0", ownerAlias)}, "", []string{"a tuntap link named \"zl-overlay0\" already exists and is not a wireguard device"}},
		{"bridge", &netlink.Bridge{LinkAttrs: attrs("zl-overlay0", "")}, owner, []string{"not a wireguard device"}},
		{"another identity's device", &netlink.Wireguard{LinkAttrs: attrs("zl-prod-g", other+"wireguard:zl-prod-g")}, owner,
			[]string{"another zlayer-overlayd identity", `"` + other + `wireguard:zl-prod-g"`, `"` + owner + `wireguard:zl-prod-g"`, "untouched"}},
		// The identity is compared whole, up to its closing colon.
		{"identity extending ours", &netlink.Wireguard{LinkAttrs: attrs("zl-prod-g", "zlayer-overlayd:0123456789abc:wireguard:zl-prod-g")}, owner,
			[]string{"another zlayer-overlayd identity"}},
	} {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			err := checkAdoptable(tt.link, tt.owner)
			if err == nil || !strings.Contains(err.Error(), "refusing") {
				t.Fatalf("err = %v, want a refusal", err)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err %q does not say %s", err, want)
				}
			}
		})
	}
}

// The kernel backend refuses a foreign link before it would try to create
// anything, so this runs on kernels without WireGuard too.
func TestKernelOpenRefusesForeignLinkAndKeepsIt(t *testing.T) {
	requireRoot(t)
	name := "zltw" + randHex(t, 6) + "kt"
	run(t, "ip", "tuntap", "add", "mode", "tun", "name", name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	_, err := kernelBackend{}.Open(name, Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "not a wireguard device") || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("Open over a TUN: %v", err)
	}
	run(t, "ip", "link", "show", name) // still there
}

func TestKernelOpenWithoutKernelSupportLeavesNothing(t *testing.T) {
	requireRoot(t)
	if has, known := kernelHasWireGuard(t); has || !known {
		t.Skip("this kernel has WireGuard (or cannot tell); the failure path is not reachable")
	}
	name := "zltw" + randHex(t, 6) + "kn"
	_, err := kernelBackend{}.Open(name, Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), `create kernel wireguard link "`+name+`"`) {
		t.Errorf("Open: %v", err)
	}
	if out, err := exec.Command("ip", "link", "show", name).CombinedOutput(); err == nil {
		t.Errorf("a link was left behind:\n%s", out)
	}
}

// requireKernelWireGuard skips unless this kernel can create wireguard
// links; the VM lab (make test-vm) boots kernels that can.
func requireKernelWireGuard(t *testing.T) {
	t.Helper()
	requireRoot(t, "wg")
	has, known := kernelHasWireGuard(t)
	switch {
	case !known:
		t.Fatal("cannot tell whether this kernel has WireGuard: ip link add … type wireguard failed for another reason")
	case !has:
		t.Skip("kernel has no WireGuard; make test-vm runs this in a VM")
	}
}

// observedLink is what ip(8), an independent observer, says about a link.
type observedLink struct {
	Index    int    `json:"ifindex"`
	Alias    string `json:"ifalias"`
	MTU      int    `json:"mtu"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
	} `json:"linkinfo"`
}

func observeLink(t *testing.T, name string) observedLink {
	t.Helper()
	var links []observedLink
	if err := json.Unmarshal([]byte(run(t, "ip", "-j", "-d", "link", "show", "dev", name)), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j -d link show dev %s: %v (%d links)", name, err, len(links))
	}
	return links[0]
}

// kernelLink creates a wireguard link by hand (as another program would),
// removed when the test ends.
func kernelLink(t *testing.T, name, alias string) observedLink {
	t.Helper()
	run(t, "ip", "link", "add", name, "type", "wireguard")
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	if alias != "" {
		run(t, "ip", "link", "set", name, "alias", alias)
	}
	return observeLink(t, name)
}

const (
	testOwner   = "zlayer-overlayd:0123456789ab:"
	otherOwner  = "zlayer-overlayd:ba9876543210:"
	kernelLabel = "wireguard:"
)

func kernelOpen(t *testing.T, name, owner string) (Device, error) {
	t.Helper()
	return kernelBackend{}.Open(name, Options{Owner: owner, Logger: slog.New(slog.DiscardHandler)})
}

// A device is labelled with its owner at creation, and a second Open by
// the same owner (a restarted daemon) adopts it as it is: same link, same
// key and port.
func TestKernelDeviceLabelledAndAdoptedByItsOwner(t *testing.T) {
	requireKernelWireGuard(t)
	name := "zltw" + randHex(t, 6) + "ko"
	d, err := kernelOpen(t, name, testOwner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	first := observeLink(t, name)
	if first.LinkInfo.Kind != "wireguard" || first.Alias != testOwner+kernelLabel+name {
		t.Fatalf("created link: kind %q alias %q, want a wireguard link labelled %q", first.LinkInfo.Kind, first.Alias, testOwner+kernelLabel+name)
	}
	key, _ := GenerateKey()
	if err := d.Configure(wgtypes.Config{PrivateKey: &key, ListenPort: new(51931)}); err != nil {
		t.Fatal(err)
	}
	// A restart: the process goes away without closing the device.
	d.(*kernelDevice).client.Close()

	d2, err := kernelOpen(t, name, testOwner)
	if err != nil {
		t.Fatalf("the owner's second Open refused its own device: %v", err)
	}
	if again := observeLink(t, name); again.Index != first.Index {
		t.Fatalf("the device was recreated (ifindex %d -> %d), not adopted", first.Index, again.Index)
	}
	snap, err := d2.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if snap.PrivateKey != key || snap.ListenPort != 51931 {
		t.Fatalf("adopted device lost its configuration: port %d", snap.ListenPort)
	}
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "link", "show", name).CombinedOutput(); err == nil {
		t.Fatalf("Close left the link:\n%s", out)
	}
}

// A device labelled by another identity is refused with both labels named,
// and left exactly as it was.
func TestKernelDeviceOfAnotherIdentityIsRefusedAndUntouched(t *testing.T) {
	requireKernelWireGuard(t)
	name := "zltw" + randHex(t, 6) + "kx"
	theirs := otherOwner + kernelLabel + name
	before := kernelLink(t, name, theirs)
	run(t, "wg", "set", name, "listen-port", "51932")
	_, err := kernelOpen(t, name, testOwner)
	if err == nil {
		t.Fatal("Open adopted another identity's device")
	}
	for _, want := range []string{theirs, testOwner + kernelLabel + name, "another zlayer-overlayd identity", "refusing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	after := observeLink(t, name)
	if after != before {
		t.Errorf("the refused link changed: %+v -> %+v", before, after)
	}
	if port := strings.TrimSpace(run(t, "wg", "show", name, "listen-port")); port != "51932" {
		t.Errorf("the refused device's listen port is %s now", port)
	}
}

// A device with only the bare mark (a creation interrupted before the
// owner's label was written) is adopted, and from then on carries the
// owner's label.
func TestKernelDeviceWithTheBareMarkIsClaimed(t *testing.T) {
	requireKernelWireGuard(t)
	name := "zltw" + randHex(t, 6) + "kb"
	before := kernelLink(t, name, ownerAlias)
	d, err := kernelOpen(t, name, testOwner)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	after := observeLink(t, name)
	if after.Index != before.Index || after.Alias != testOwner+kernelLabel+name {
		t.Fatalf("bare-marked link: ifindex %d -> %d, alias %q; want it adopted and labelled %q", before.Index, after.Index, after.Alias, testOwner+kernelLabel+name)
	}
}

// A device that changed hands while open (relabelled by another identity)
// is not deleted by Close.
func TestKernelDeviceCloseSparesARelabelledLink(t *testing.T) {
	requireKernelWireGuard(t)
	name := "zltw" + randHex(t, 6) + "kr"
	d, err := kernelOpen(t, name, testOwner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	run(t, "ip", "link", "set", name, "alias", otherOwner+kernelLabel+name)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	observeLink(t, name) // still there
}
