package wg

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
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
	if err := checkAdoptable(&netlink.Wireguard{LinkAttrs: attrs("zl-overlay0", ownerAlias)}); err != nil {
		t.Errorf("our own wireguard link refused: %v", err)
	}
	for _, tt := range []struct {
		name string
		link netlink.Link
		want string
	}{
		{"wireguard link of someone else", &netlink.Wireguard{LinkAttrs: attrs("wg0", "")}, "was not created by zlayer-overlayd"},
		{"wireguard link with another alias", &netlink.Wireguard{LinkAttrs: attrs("wg0", "corp vpn")}, `its alias is "corp vpn"`},
		{"TUN with our alias", &netlink.Tuntap{LinkAttrs: attrs("zl-overlay0", ownerAlias)}, "a tuntap link named \"zl-overlay0\" already exists and is not a wireguard device"},
		{"bridge", &netlink.Bridge{LinkAttrs: attrs("zl-overlay0", "")}, "not a wireguard device"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := checkAdoptable(tt.link)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "refusing") {
				t.Errorf("err = %v, want a refusal mentioning %q", err, tt.want)
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
