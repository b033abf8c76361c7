//go:build linux

package vm

import (
	"net"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

// envGuestHelper makes this package's own test binary, run in the guest
// by TestVMReportsWhatTheGuestSaw, misbehave the way a suite can.
const envGuestHelper = "ZLAYER_VM_GUEST_HELPER"

const leakedNetns = "zlvm-selfcheck-leak"

func TestGuestHelper(t *testing.T) {
	switch os.Getenv(envGuestHelper) {
	case "":
		t.Skip("runs in the guest, started by TestVMReportsWhatTheGuestSaw")
	case "leak":
		if out, err := exec.Command("ip", "netns", "add", leakedNetns).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		// What a SIGKILLed data plane leaves: its socket file, nobody
		// listening.
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: "/run/wireguard/" + leakedNetns + ".sock", Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()
	case "fail":
		t.Fatal("failing on purpose")
	case "skip":
		t.Skip("skipping on purpose")
	case "hang":
		for {
			time.Sleep(time.Hour)
		}
	}
}

// The lab itself, on a real guest: a suite's exit code, failed and skipped
// tests, and what it left behind in the guest reach the host as they were.
func TestVMReportsWhatTheGuestSaw(t *testing.T) {
	if os.Getenv(EnvSkip) != "" {
		t.Skipf("%s is set", EnvSkip)
	}
	if err := Check(); err != nil {
		t.Skip("VM lab: " + err.Error())
	}
	ctx := labContext(t)
	k, err := ResolveKernel(ctx, CacheDir(), Bookworm, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	helper := func(name string) Suite {
		return Suite{Name: name, Package: "internal/lab/vm", Run: "^TestGuestHelper$", Timeout: 2 * time.Minute,
			Env: []string{envGuestHelper + "=" + name}}
	}
	suites := []Suite{helper("leak"), helper("fail"), helper("skip")}
	suites[2].MustRun = "."
	l, err := New(ctx, Config{ModuleRoot: moduleRoot(t), WorkDir: t.TempDir(), Logf: t.Logf}, suites)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := l.Boot(ctx, k, suites)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Done || !strings.HasPrefix(rep.Booted, k.Release) || len(rep.Suites) != 3 {
		t.Fatalf("report %+v", rep)
	}
	defer func() {
		if t.Failed() {
			t.Logf("guest console:\n%s", tail(rep.Console, 40))
		}
	}()
	leak, fail, skip := rep.Suites[0], rep.Suites[1], rep.Suites[2]
	if leak.ExitCode != 0 || leak.Passed() || !strings.Contains(leak.Leftover, "netns "+leakedNetns) || !strings.Contains(leak.Leftover, "uapi "+leakedNetns+".sock") {
		t.Errorf("a suite that leaves a namespace and a UAPI socket behind: exit %d, leftover %q, passed %v", leak.ExitCode, leak.Leftover, leak.Passed())
	}
	if fail.ExitCode != 1 || fail.Passed() || !reflect.DeepEqual(fail.Failed(), []string{"TestGuestHelper"}) || !strings.Contains(fail.Output, "failing on purpose") {
		t.Errorf("a failing suite: exit %d, failed %v\n%s", fail.ExitCode, fail.Failed(), fail.Output)
	}
	if fail.Leftover != "" {
		t.Errorf("the next suite is charged with the earlier one's leak: %q", fail.Leftover)
	}
	if !skip.Passed() || !reflect.DeepEqual(mustNotSkip(suites[2], skip.Skipped()), []string{"TestGuestHelper"}) {
		t.Errorf("a skip where none is allowed went unnoticed: %+v", skip)
	}
}
