//go:build linux

package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Suite is one package's test binary run in the guest.
type Suite struct {
	// Name is unique within a run.
	Name string
	// Package is the package directory relative to the module root
	// ("internal/e2e"); its test binary runs there, as go test would
	// run it, so testdata and relative paths resolve.
	Package string
	// Run and Skip are -test.run and -test.skip; empty means all, none.
	Run, Skip string
	// Args are further flags of the test binary, Env variables for it.
	Args, Env []string
	// Timeout is -test.timeout for one pass of the suite (10 minutes if
	// zero): the binary panics with every goroutine's stack when it is
	// exceeded.
	Timeout time.Duration
	// Count is -test.count (1 if zero); the suite's time limit grows
	// with it.
	Count int
	// MustRun matches the tests that must not skip in the guest: a skip
	// there means the guest lacks what they test, which fails the suite.
	MustRun string
}

// binary is the test binary's file name, as go test -c -o DIR/ names it.
func (s Suite) binary() string { return path.Base(s.Package) + ".test" }

// Guest paths of the payload.
const (
	guestTests  = "/zlvm/tests"
	guestBin    = "/zlvm/bin"
	guestSource = "/zlvm/src"
)

// count is how many times the suite's tests run.
func (s Suite) count() int { return max(s.Count, 1) }

// limit is the suite's -test.timeout: all its passes together.
func (s Suite) limit() time.Duration {
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	return timeout * time.Duration(s.count())
}

// command is the suite's line in suites.sh.
func (s Suite) command() string {
	argv := []string{"suite", s.Name, s.Package, "ZLAYER_TESTBIN_DIR=" + guestBin}
	argv = append(argv, s.Env...)
	argv = append(argv, guestTests+"/"+s.binary(), "-test.v", "-test.count="+strconv.Itoa(s.count()), "-test.timeout="+s.limit().String())
	if s.Run != "" {
		argv = append(argv, "-test.run="+s.Run)
	}
	if s.Skip != "" {
		argv = append(argv, "-test.skip="+s.Skip)
	}
	argv = append(argv, s.Args...)
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// payload is what the guest runs, built on the host: the commands, the
// test binaries of the suites' packages and the module's source tree (the
// tests' testdata and the files they read). The Go toolchain does not go
// into the guest: everything is built here, statically (CGO_ENABLED=0),
// so it runs on any kernel without a C library. No race detector, which
// needs cgo.
type payload struct {
	dir string // bin/, tests/, src/
}

// peerCommands are the tools of required modules that tests build with
// testbin.BuildPackage (cnitool drives zlayer-cni as a runtime would); in
// the guest they come prebuilt from bin/ like the project's commands.
var peerCommands = []string{"github.com/containernetworking/cni/cnitool"}

func buildPayload(ctx context.Context, moduleRoot, dir string, suites []Suite) (*payload, error) {
	p := &payload{dir: dir}
	for _, d := range []string{"bin", "tests"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := goTool(ctx, moduleRoot, append([]string{"build", "-o", filepath.Join(dir, "bin") + "/", "./cmd/..."}, peerCommands...)...); err != nil {
		return nil, err
	}
	pkgs := map[string]bool{}
	args := []string{"test", "-c", "-o", filepath.Join(dir, "tests") + "/"}
	for _, s := range suites {
		if !pkgs[s.Package] {
			pkgs[s.Package] = true
			args = append(args, "./"+s.Package)
		}
	}
	if err := goTool(ctx, moduleRoot, args...); err != nil {
		return nil, err
	}
	for _, s := range suites {
		if _, err := os.Stat(filepath.Join(dir, "tests", s.binary())); err != nil {
			return nil, fmt.Errorf("suite %s: go test -c made no %s (does %s have tests?)", s.Name, s.binary(), s.Package)
		}
	}
	return p, nil
}

func goTool(ctx context.Context, moduleRoot string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = moduleRoot
	// GOFLAGS is cleared so that a -race of the calling go test cannot
	// leak into a build that must be static.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// sourceFiles lists the module's files as git sees them (tracked, and
// new files not ignored), or every file when it is not a git checkout.
func sourceFiles(ctx context.Context, moduleRoot string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "git", "-C", moduleRoot, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err == nil {
		var files []string
		for _, f := range strings.Split(string(out), "\x00") {
			if f != "" {
				files = append(files, f)
			}
		}
		return files, nil
	}
	var files []string
	err = filepath.WalkDir(moduleRoot, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && p != moduleRoot {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(moduleRoot, p)
			files = append(files, rel)
		}
		return nil
	})
	return files, err
}
