package dns

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func addrPorts(ss ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range ss {
		out = append(out, netip.MustParseAddrPort(s))
	}
	return out
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	conf := writeFile(t, "resolv.conf", `# generated
search example.org
nameserver 10.0.0.2
nameserver   2001:db8::53
; a comment
nameserver 127.0.0.1
nameserver ::1
nameserver 10.0.0.2
nameserver 0.0.0.0
nameserver not-an-address
nameserver fe80::1%eth0
options ndots:2
`)
	got, err := UpstreamsFromResolvConf(conf, filepath.Join(t.TempDir(), "absent"))
	if err != nil {
		t.Fatal(err)
	}
	want := addrPorts("10.0.0.2:53", "[2001:db8::53]:53", "[fe80::1%eth0]:53")
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestUpstreamsFromSystemdResolvedStub(t *testing.T) {
	stub := writeFile(t, "resolv.conf", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
	real := writeFile(t, "real.conf", "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 127.0.0.53\n")
	got, err := UpstreamsFromResolvConf(stub, real)
	if err != nil {
		t.Fatal(err)
	}
	if want := addrPorts("192.0.2.1:53", "192.0.2.2:53"); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}

	_, err = UpstreamsFromResolvConf(stub, filepath.Join(t.TempDir(), "absent"))
	if err == nil || !strings.Contains(err.Error(), "systemd-resolved") {
		t.Fatalf("unreadable resolved list: err = %v", err)
	}
}

func TestUpstreamsFromResolvConfErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.conf")
	if _, err := UpstreamsFromResolvConf(missing, ""); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing file: err = %v; want one naming the path", err)
	}
	onlyLoop := writeFile(t, "resolv.conf", "nameserver 127.0.0.1\nnameserver ::1\n")
	if _, err := UpstreamsFromResolvConf(onlyLoop, ""); !errors.Is(err, ErrNoUpstreams) || !strings.Contains(err.Error(), onlyLoop) {
		t.Fatalf("only loopback: err = %v; want ErrNoUpstreams naming the file", err)
	}
}
