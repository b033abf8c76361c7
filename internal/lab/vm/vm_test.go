//go:build linux

package vm

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	all      = flag.Bool("vm.all", false, "boot every kernel and run every privileged suite in it (make test-vm); default: the kernel WireGuard suites on Debian 12's kernel")
	only     = flag.String("vm.suites", "", "run only the suites whose names match this regexp")
	kernelRe = flag.String("vm.kernels", "", "boot only the kernels whose dist names match this regexp")
)

// EnvSkip turns the VM lab off in `make test` (it boots a guest for
// minutes); CI never sets it.
const EnvSkip = "ZLAYER_VM_SKIP"

// The suites CI runs on Debian 12's kernel: everything that needs kernel
// WireGuard. Nothing in them may skip there.
var ciSuites = []Suite{
	{Name: "kernelwg", Package: "internal/e2e", Run: "^TestKernelWG", Timeout: 25 * time.Minute, MustRun: "."},
	{Name: "wg-kernel", Package: "internal/wg", Run: "^(TestKernel|TestNewBackend)", Timeout: 5 * time.Minute,
		MustRun: "^(TestKernelDevice|TestNewBackend)"},
}

// allSuites are every package with privileged tests, on every kernel:
// the e2e suites once with `auto` (kernel WireGuard there) and once with
// userspace WireGuard on that kernel's TUN.
var allSuites = append(append([]Suite{}, ciSuites...),
	Suite{Name: "e2e", Package: "internal/e2e", Skip: "^TestKernelWG", Timeout: 40 * time.Minute},
	Suite{Name: "e2e-userspace", Package: "internal/e2e", Skip: "^TestKernelWG", Timeout: 40 * time.Minute,
		Env: []string{"ZLAYER_E2E_WIREGUARD=userspace"}},
	Suite{Name: "wg", Package: "internal/wg", Skip: "^(TestKernel|TestNewBackend)", Timeout: 15 * time.Minute,
		MustRun: "^TestTUNOffloadsAreOn$"},
	Suite{Name: "linuxnet", Package: "internal/linuxnet", Timeout: 10 * time.Minute},
	Suite{Name: "firewall", Package: "internal/firewall", Timeout: 10 * time.Minute},
	Suite{Name: "dns", Package: "internal/dns", Timeout: 10 * time.Minute},
	Suite{Name: "nat", Package: "internal/nat", Timeout: 15 * time.Minute},
	Suite{Name: "ipc", Package: "internal/ipc", Timeout: 10 * time.Minute},
	Suite{Name: "lab", Package: "internal/lab", Timeout: 10 * time.Minute},
	Suite{Name: "daemon", Package: "cmd/zlayer-overlayd", Timeout: 15 * time.Minute},
	Suite{Name: "packaging", Package: "packaging", Timeout: 10 * time.Minute},
)

// The guest on each kernel passes its suites: CI's part on Debian 12's
// kernel, or (-vm.all) every suite on Debian 12's and the newest
// backports kernel.
func TestVM(t *testing.T) {
	if os.Getenv(EnvSkip) != "" {
		t.Skipf("%s is set", EnvSkip)
	}
	if err := Check(); err != nil {
		t.Skip("VM lab: " + err.Error())
	}
	suites, dists := ciSuites, []Dist{Bookworm}
	if *all {
		suites, dists = allSuites, []Dist{Bookworm, BookwormBackports}
	}
	suites, dists = filterPlan(t, suites, dists)
	ctx := context.Background()
	cfg := Config{ModuleRoot: moduleRoot(t), WorkDir: t.TempDir(), Logf: t.Logf}
	kernels := make([]*Kernel, len(dists))
	for i, d := range dists {
		k, err := ResolveKernel(ctx, CacheDir(), d, t.Logf)
		if err != nil {
			t.Fatalf("resolve the %s kernel: %v", d.Name, err)
		}
		t.Logf("kernel %s: %s", d.Name, k)
		kernels[i] = k
	}
	l, err := New(ctx, cfg, suites)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range kernels {
		t.Run(k.Dist, func(t *testing.T) {
			start := time.Now()
			rep, err := l.Boot(ctx, k)
			t.Logf("%s: guest ran for %v (%s); modules loaded: %s", k, time.Since(start).Round(time.Second), rep.Booted, strings.Join(rep.Modules, " "))
			for _, s := range suites {
				t.Run(s.Name, func(t *testing.T) { judge(t, s, rep) })
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// judge fails t unless the guest ran s to a clean pass.
func judge(t *testing.T, s Suite, rep Report) {
	var res *SuiteResult
	for i := range rep.Suites {
		if rep.Suites[i].Name == s.Name {
			res = &rep.Suites[i]
		}
	}
	if res == nil {
		t.Fatal("the guest never started this suite")
	}
	t.Logf("%s in the guest: exit %d after %v", s.Name, res.ExitCode, res.Duration)
	if !res.Passed() || len(res.Failed()) > 0 {
		t.Errorf("failed (exit %d, finished %v, failed tests %v)\n%s", res.ExitCode, res.Finished, res.Failed(), res.Output)
	}
	if res.Leftover != "" {
		t.Errorf("left behind in the guest's root namespace: %s", res.Leftover)
	}
	if skipped := res.Skipped(); len(skipped) > 0 {
		t.Logf("skipped in the guest: %s", strings.Join(skipped, " "))
		if bad := mustNotSkip(s, skipped); len(bad) > 0 {
			t.Errorf("these tests must run in the guest but skipped: %v\n%s", bad, res.Output)
		}
	}
	if testing.Verbose() && !t.Failed() {
		t.Logf("output:\n%s", res.Output)
	}
}

func mustNotSkip(s Suite, skipped []string) []string {
	if s.MustRun == "" {
		return nil
	}
	re := regexp.MustCompile(s.MustRun)
	var bad []string
	for _, name := range skipped {
		if re.MatchString(name) {
			bad = append(bad, name)
		}
	}
	return bad
}

func filterPlan(t *testing.T, suites []Suite, dists []Dist) ([]Suite, []Dist) {
	t.Helper()
	if *only != "" {
		re := regexp.MustCompile(*only)
		var keep []Suite
		for _, s := range suites {
			if re.MatchString(s.Name) {
				keep = append(keep, s)
			}
		}
		suites = keep
	}
	if *kernelRe != "" {
		re := regexp.MustCompile(*kernelRe)
		var keep []Dist
		for _, d := range dists {
			if re.MatchString(d.Name) {
				keep = append(keep, d)
			}
		}
		dists = keep
	}
	if len(suites) == 0 || len(dists) == 0 {
		t.Skip("-vm.suites / -vm.kernels select nothing")
	}
	return suites, dists
}

func moduleRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}
