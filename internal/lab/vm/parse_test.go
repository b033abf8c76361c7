//go:build linux

package vm

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseReport(t *testing.T) {
	raw := "noise before init\r\n" +
		"=== ZLVM BOOTED 6.1.0-57-cloud-amd64 cpus=2 mem_kb=3055144\r\n" +
		"=== ZLVM BEGIN kernelwg\r\n" +
		"=== RUN   TestA\r\n--- PASS: TestA (1.00s)\r\n--- SKIP: TestB (0.00s)\r\n" +
		"=== ZLVM END kernelwg rc=0 seconds=56\r\n" +
		"=== ZLVM BEGIN wg\n" +
		"--- FAIL: TestC (0.10s)\n    --- FAIL: TestC/sub (0.10s)\n" +
		"=== ZLVM END wg rc=1 seconds=4\n" +
		"=== ZLVM LEFTOVER wg netns zltw-1 link zltw1a\n" +
		"=== ZLVM BEGIN dns\n" +
		"half a line"
	r, err := parseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if r.Booted != "6.1.0-57-cloud-amd64 cpus=2 mem_kb=3055144" || r.Done || len(r.Suites) != 3 {
		t.Fatalf("report %+v", r)
	}
	kwg, wg, dns := r.Suites[0], r.Suites[1], r.Suites[2]
	if !kwg.Passed() || kwg.Duration != 56*time.Second || !reflect.DeepEqual(kwg.Skipped(), []string{"TestB"}) || strings.Contains(kwg.Output, "\r") {
		t.Errorf("kernelwg %+v", kwg)
	}
	if wg.Passed() || wg.ExitCode != 1 || !reflect.DeepEqual(wg.Failed(), []string{"TestC", "TestC/sub"}) || wg.Leftover != "netns zltw-1 link zltw1a" {
		t.Errorf("wg %+v", wg)
	}
	if dns.Finished || dns.Passed() || dns.Output != "half a line\n" {
		t.Errorf("a suite the guest never finished: %+v", dns)
	}
}

func TestParseReportRejectsMismatchedEnd(t *testing.T) {
	for _, raw := range []string{
		"=== ZLVM END wg rc=0 seconds=1\n",
		"=== ZLVM BEGIN wg\n=== ZLVM END dns rc=0 seconds=1\n",
		"=== ZLVM BEGIN wg\n=== ZLVM END wg rc=x seconds=1\n",
	} {
		if _, err := parseReport(raw); err == nil {
			t.Errorf("accepted %q", raw)
		}
	}
}

// A leftover is a failure even when every test passed: suites must clean
// up after themselves.
func TestLeftoverFailsASuite(t *testing.T) {
	s := SuiteResult{Finished: true, Leftover: "netns x"}
	if s.Passed() {
		t.Fatal("a suite that left a namespace behind passed")
	}
}

func TestParseLdd(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007fff)
	libbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f29373c9000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f29371a0000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f293752c000)
`
	got, err := parseLdd(out)
	want := []string{"/lib/x86_64-linux-gnu/libbpf.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("parseLdd = %v, %v", got, err)
	}
	if _, err := parseLdd("\tlibfoo.so.1 => not found\n"); err == nil {
		t.Fatal("a missing library was not reported")
	}
}

// The host's own ldd on the host's ip: every library it names is found.
func TestParseLddOnARealBinary(t *testing.T) {
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("no ip on PATH")
	}
	out, err := exec.Command("ldd", ip).CombinedOutput()
	if err != nil {
		t.Skipf("ldd %s: %v", ip, err)
	}
	libs, err := parseLdd(string(out))
	if err != nil || len(libs) == 0 {
		t.Fatalf("parseLdd(ldd %s) = %v, %v\n%s", ip, libs, err, out)
	}
}

func TestParseKernelDepends(t *testing.T) {
	out := "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n"
	if got, err := parseKernelDepends(out); err != nil || got != "linux-image-6.1.0-57-cloud-amd64" {
		t.Fatalf("parseKernelDepends = %q, %v", got, err)
	}
	if _, err := parseKernelDepends("linux-image-cloud-amd64\n  Depends: something-else\n"); err == nil {
		t.Fatal("no kernel package, no error")
	}
	if v, err := parseVersion("Package: x\nVersion: 6.1.192-3\nArchitecture: amd64\n", "x"); err != nil || v != "6.1.192-3" {
		t.Fatalf("parseVersion = %q, %v", v, err)
	}
}

func TestSuiteCommand(t *testing.T) {
	s := Suite{Name: "e2e-userspace", Package: "internal/e2e", Run: "^TestKernelWG", Skip: "^(A|B)$",
		Env: []string{"ZLAYER_E2E_WIREGUARD=userspace"}, Args: []string{"-chaos.ops=150"}, Timeout: 40 * time.Minute}
	want := "suite e2e-userspace internal/e2e ZLAYER_TESTBIN_DIR=/zlvm/bin ZLAYER_E2E_WIREGUARD=userspace /zlvm/tests/e2e.test " +
		"-test.v -test.count=1 -test.timeout=40m0s '-test.run=^TestKernelWG' '-test.skip=^(A|B)$' -chaos.ops=150"
	if got := s.command(); got != want {
		t.Fatalf("command\n got %s\nwant %s", got, want)
	}
	s.Count = 3
	if got, want := s.command(), "-test.count=3 -test.timeout=2h0m0s "; !strings.Contains(got, want) {
		t.Fatalf("command with Count 3\n got %s\nwant it to contain %s", got, want)
	}
	if got := shellQuote("it's"); got != `'it'\''s'` {
		t.Fatalf("shellQuote = %s", got)
	}
}

func TestKernelProblems(t *testing.T) {
	console := "[    0.000000] Linux version 6.1.0\n[   12.1] WARNING: CPU: 1 PID: 42 at net/core/dev.c:1 x\n[   12.2] ok\n"
	if got := kernelProblems(console); !strings.Contains(got, "WARNING: CPU: 1") || strings.Contains(got, "ok") {
		t.Fatalf("kernelProblems = %q", got)
	}
	if got := kernelProblems("[    0.1] all fine\n"); got != "" {
		t.Fatalf("kernelProblems of a clean console = %q", got)
	}
}

func TestIsFatal(t *testing.T) {
	for _, line := range []string{
		"[    8.810213] BUG: kernel NULL pointer dereference, address: 0000000000000000",
		"[    8.811]  Oops: Oops: 0010 [#1] PREEMPT SMP NOPTI",
		"[   36.1] Kernel panic - not syncing: Fatal exception",
	} {
		if !isFatal(line) {
			t.Errorf("not fatal: %q", line)
		}
	}
	if isFatal("[    6.241948] WARNING: CPU: 0 PID: 189 at arch/x86/kernel/traps.c:1120") {
		t.Error("a warning stopped the guest; it only fails the run at the end")
	}
}
