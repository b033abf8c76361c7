//go:build linux

package vm

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	all      = flag.Bool("vm.all", false, "every privileged suite on every kernel (make test-vm); default: the CI plan")
	only     = flag.String("vm.suites", "", "run only the suites whose names match this regexp")
	kernelRe = flag.String("vm.kernels", "", "boot only the kernels whose dist names match this regexp")
	runRe    = flag.String("vm.run", "", "-test.run for every selected suite, instead of its own")
	count    = flag.Int("vm.count", 1, "-test.count for every selected suite: repeats a flaky test within one boot")
)

// EnvSkip turns the VM lab off in `make test` (it boots guests for
// minutes); CI never sets it.
const EnvSkip = "ZLAYER_VM_SKIP"

// kernelWGSuites need kernel WireGuard: nothing in them may skip in the
// guest.
var kernelWGSuites = []Suite{
	{Name: "kernelwg", Package: "internal/e2e", Run: "^TestKernelWG", Timeout: 25 * time.Minute, MustRun: "."},
	{Name: "wg-kernel", Package: "internal/wg", Run: "^(TestKernel|TestNewBackend)", Timeout: 5 * time.Minute,
		MustRun: "^(TestKernelDevice|TestNewBackend)"},
}

// allSuites are every package with privileged tests: the e2e suites once
// with `auto` (kernel WireGuard there) and once with userspace WireGuard
// on that kernel's TUN.
var allSuites = append(append([]Suite{}, kernelWGSuites...),
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
	Suite{Name: "overlayctl", Package: "cmd/overlayctl", Timeout: 5 * time.Minute},
	Suite{Name: "packaging", Package: "packaging", Timeout: 10 * time.Minute},
)

// A plan says which suites run on which kernel.
type plan []struct {
	dist   Dist
	suites []Suite
}

// without returns suites less the one named.
func without(suites []Suite, name string) []Suite {
	return slices.DeleteFunc(slices.Clone(suites), func(s Suite) bool { return s.Name == name })
}

var (
	// ciPlan is what `make test`, and so CI, runs: on Debian 12's kernel
	// every suite with what `auto` picks there (kernel WireGuard), on the
	// backports kernel the kernel WireGuard suites. The userspace e2e
	// pass is left to make test-vm: it repeats on the guest what the host
	// run of make test covers, for 8 more minutes of emulated CPU, where
	// every minute is a chance for a timing flake. 13 to 18 minutes of
	// the hour CI may take on the hosts of 2026-12-05, 30 on the slower
	// ones of 2026-12-07 (docs/operations.md).
	ciPlan = plan{{Bookworm, without(allSuites, "e2e-userspace")}, {BookwormBackports, kernelWGSuites}}
	// fullPlan (-vm.all, make test-vm) runs everything everywhere.
	fullPlan = plan{{Bookworm, allSuites}, {BookwormBackports, allSuites}}
)

// The guest on each kernel of the plan passes its suites.
func TestVM(t *testing.T) {
	if os.Getenv(EnvSkip) != "" {
		t.Skipf("%s is set", EnvSkip)
	}
	if err := Check(); err != nil {
		t.Skip("VM lab: " + err.Error())
	}
	p := ciPlan
	if *all {
		p = fullPlan
	}
	p = filterPlan(t, p)
	ctx := labContext(t)
	kernels := make([]*Kernel, len(p))
	var union []Suite
	for i, step := range p {
		k, err := ResolveKernel(ctx, CacheDir(), step.dist, t.Logf)
		if err != nil {
			t.Fatalf("resolve the %s kernel: %v", step.dist.Name, err)
		}
		t.Logf("kernel %s: %s", step.dist.Name, k)
		kernels[i] = k
		union = append(union, step.suites...)
	}
	l, err := New(ctx, Config{ModuleRoot: moduleRoot(t), WorkDir: t.TempDir(), Logf: t.Logf}, union)
	if err != nil {
		t.Fatal(err)
	}
	for i, step := range p {
		k := kernels[i]
		t.Run(k.Dist, func(t *testing.T) {
			start := time.Now()
			rep, err := l.Boot(ctx, k, step.suites)
			t.Logf("%s: guest ran for %v (%s); modules loaded: %s", k, time.Since(start).Round(time.Second), rep.Booted, strings.Join(rep.Modules, " "))
			for _, s := range step.suites {
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
		t.Errorf("left behind in the guest (root namespace, UAPI sockets): %s", res.Leftover)
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

// filterPlan applies -vm.suites, -vm.kernels, -vm.run and -vm.count.
func filterPlan(t *testing.T, p plan) plan {
	t.Helper()
	var out plan
	for _, step := range p {
		if *kernelRe != "" && !regexp.MustCompile(*kernelRe).MatchString(step.dist.Name) {
			continue
		}
		var suites []Suite
		for _, s := range step.suites {
			if *only == "" || regexp.MustCompile(*only).MatchString(s.Name) {
				if *runRe != "" {
					s.Run = *runRe
				}
				s.Count = *count
				suites = append(suites, s)
			}
		}
		if len(suites) > 0 {
			step.suites = suites
			out = append(out, step)
		}
	}
	if len(out) == 0 {
		t.Skip("-vm.suites / -vm.kernels select nothing")
	}
	return out
}

// labDeadlineMargin is what the lab keeps of go test's -timeout to stop a
// guest, report it and remove its files.
const labDeadlineMargin = 30 * time.Second

// labContext ends a little before go test's -timeout does: a guest still
// running then is stopped and reported by the lab, which cleans up after
// it, instead of the test binary panicking with QEMU left running.
func labContext(t *testing.T) context.Context {
	d, ok := t.Deadline()
	if !ok {
		return context.Background()
	}
	ctx, cancel := context.WithDeadlineCause(context.Background(), d.Add(-labDeadlineMargin),
		fmt.Errorf("go test's -timeout ends this run at %s; the VM lab needs more (make test gives it 60m, make test-vm 300m)", d.Format(time.TimeOnly)))
	t.Cleanup(cancel)
	return ctx
}

func moduleRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}
