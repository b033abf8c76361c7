package testbin

import (
	"os"
	"path/filepath"
	"testing"
)

// With $ZLAYER_TESTBIN_DIR set, Build hands out the prebuilt command and
// builds nothing; Cleanup leaves the directory alone.
func TestBuildUsesPrebuiltDir(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "zlayer-overlayd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvDir, dir)
	if got := Build(t, "zlayer-overlayd"); got != bin {
		t.Fatalf("Build = %q, want %q", got, bin)
	}
	Cleanup()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Cleanup removed a prebuilt command: %v", err)
	}
}

// A prebuilt directory without the command fails the test that asked,
// rather than silently building one.
func TestBuildPrebuiltMissingFails(t *testing.T) {
	t.Setenv(EnvDir, t.TempDir())
	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { recover() }()
		Build(ft, "overlayctl")
	}()
	if !ft.failed {
		t.Fatal("Build of a command missing from the prebuilt directory did not fail")
	}
}

type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(string, ...any) {
	f.failed = true
	panic("fatal")
}
