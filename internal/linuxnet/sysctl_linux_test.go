package linuxnet

import (
	"os"
	"strings"
	"testing"
)

func TestSysctlPath(t *testing.T) {
	for name, want := range map[string]string{
		"net.ipv4.ip_forward":               "/proc/sys/net/ipv4/ip_forward",
		"net/ipv4/conf/zl-web.b/rp_filter":  "/proc/sys/net/ipv4/conf/zl-web.b/rp_filter",
		"net.ipv6.conf.all.forwarding":      "/proc/sys/net/ipv6/conf/all/forwarding",
		"net/ipv4/neigh/default/gc_thresh1": "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
	} {
		if got, err := sysctlPath(name); err != nil || got != want {
			t.Errorf("sysctlPath(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	for _, bad := range []string{"", "/etc/passwd", "../etc/passwd", "net/../../etc/passwd", "net//ipv4", "..", "net/ipv4/"} {
		if got, err := sysctlPath(bad); err == nil {
			t.Errorf("sysctlPath(%q) = %q, want an error", bad, got)
		}
	}
}

func readSysctl(t *testing.T, knob string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + knob)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestSetSysctl(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	if err := SetSysctl("net.ipv4.conf.lo.rp_filter", "2"); err != nil {
		t.Fatal(err)
	}
	if got := readSysctl(t, "net/ipv4/conf/lo/rp_filter"); got != "2" {
		t.Errorf("rp_filter of lo = %s after SetSysctl, want 2", got)
	}
	if err := SetSysctl("net.ipv4.conf.zltl-missing.rp_filter", "1"); err == nil {
		t.Error("SetSysctl on a missing interface succeeded")
	}
}
