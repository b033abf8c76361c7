// Package testbin builds the project's commands once per test process so
// end-to-end tests run the real binaries, exactly as an operator would.
//
// Where there is no Go toolchain (the VM lab's guest, internal/lab/vm),
// $ZLAYER_TESTBIN_DIR names a directory of commands built beforehand, and
// Build returns those instead.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// EnvDir names a directory of prebuilt commands (zlayer-overlayd,
// overlayctl, zlayer-cni, and the tools BuildPackage names) that Build and
// BuildPackage return instead of building.
const EnvDir = "ZLAYER_TESTBIN_DIR"

var (
	once sync.Once
	dir  string
	err  error
	out  []byte
)

// Build returns the path of the named command (e.g. "zlayer-overlayd")
// built from this checkout. The directory is world-readable so tests can
// run the binaries as other users.
func Build(t testing.TB, name string) string {
	t.Helper()
	if pre := os.Getenv(EnvDir); pre != "" {
		return prebuilt(t, pre, name)
	}
	once.Do(func() {
		dir, err = os.MkdirTemp("", "zlayer-testbin-")
		if err != nil {
			return
		}
		if err = os.Chmod(dir, 0o755); err != nil {
			return
		}
		args := []string{"build", "-o", dir + string(filepath.Separator)}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/...")
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot()
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("building commands: %v\n%s", err, out)
	}
	return filepath.Join(dir, name)
}

var (
	pkgMu    sync.Mutex
	pkgBuilt = map[string]string{}
)

// BuildPackage builds the command at import path pkg — a tool of a module
// this one requires, such as github.com/containernetworking/cni/cnitool, at
// the version go.mod pins — next to the project's commands (built without
// the race detector: it is a peer, not code under test) and returns its
// path. Under $ZLAYER_TESTBIN_DIR it is the prebuilt command of that
// base name.
func BuildPackage(t testing.TB, pkg string) string {
	t.Helper()
	if pre := os.Getenv(EnvDir); pre != "" {
		return prebuilt(t, pre, filepath.Base(pkg))
	}
	Build(t, "") // the directory
	pkgMu.Lock()
	defer pkgMu.Unlock()
	if p, ok := pkgBuilt[pkg]; ok {
		return p
	}
	p := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", p, pkg)
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, out)
	}
	pkgBuilt[pkg] = p
	return p
}

func prebuilt(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		t.Fatalf("%s=%s has no executable %s: %v", EnvDir, dir, name, err)
	}
	return p
}

// Cleanup removes the binaries Build made (never prebuilt ones); call it
// from TestMain after m.Run.
func Cleanup() {
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// Main is the TestMain of a package whose tests Build: it runs them and
// removes what Build made, which t.Cleanup cannot (the binaries are shared
// by every test of the process).
func Main(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
