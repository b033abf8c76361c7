//go:build linux

package vm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A host binary lands in the root at its own path with every library its
// loader will look for, through the same /lib → usr/lib links as on the
// host, and writing through those links stays inside the root.
func TestRootCopiesABinaryWithItsLibraries(t *testing.T) {
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("no ip on PATH")
	}
	r, err := newRoot(filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.addBinary(context.Background(), ip); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ldd", ip).CombinedOutput()
	if err != nil {
		t.Skipf("ldd: %v", err)
	}
	libs, _ := parseLdd(string(out))
	for _, p := range append(libs, ip) {
		st, err := os.Stat(r.path(p))
		if err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s is not in the root: %v", p, err)
		}
	}
	for _, top := range []string{"/lib", "/lib64", "/bin", "/sbin"} {
		host, err := os.Lstat(top)
		if err != nil || host.Mode()&os.ModeSymlink == 0 {
			continue
		}
		target, err := os.Readlink(r.path(top))
		if err != nil || filepath.IsAbs(target) {
			t.Errorf("%s in the root: %q, %v; want a relative link like the host's", top, target, err)
		}
	}
	if target, err := os.Readlink(r.path("/var/run")); err != nil || target != "../run" {
		t.Errorf("/var/run in the root: %q, %v", target, err)
	}
}
