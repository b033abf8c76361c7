//go:build linux

// Package benchlib is what every side-by-side benchmark shares: unique
// names, namespaces and processes that are always cleaned up (normal exit,
// error or Ctrl-C), interleaved A/B rounds and their summary.
package benchlib

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Prefix starts every namespace, link and file name a benchmark creates, so
// a leftover is recognisable (and never collides with the test suites').
const Prefix = "zltb"

// ID is this run's random tag: names are Prefix+ID+suffix.
var ID = func() string {
	var b [2]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

// Name is a name unique to this run, at most 15 bytes (an interface name).
func Name(suffix string) string {
	n := Prefix + ID + suffix
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

var (
	cleanMu  sync.Mutex // guards cleanups
	cleanups []func()
	// cleaning is held while cleanups run, so a second caller (a failure
	// in main racing the Ctrl-C handler) waits for the first to finish
	// instead of exiting halfway through.
	cleaning sync.Mutex
	sigOnce  sync.Once
)

// Defer registers f to run at Cleanup, in reverse order of registration.
func Defer(f func()) {
	cleanMu.Lock()
	cleanups = append(cleanups, f)
	cleanMu.Unlock()
}

// Cleanup runs every registered cleanup once. main defers it, and the
// signal handler calls it before exiting, so Ctrl-C leaves nothing behind.
func Cleanup() {
	cleaning.Lock()
	defer cleaning.Unlock()
	cleanMu.Lock()
	fs := cleanups
	cleanups = nil
	cleanMu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// HandleSignals makes SIGINT, SIGTERM and SIGHUP clean up and exit 130.
func HandleSignals() {
	sigOnce.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		go func() {
			s := <-ch
			fmt.Fprintf(os.Stderr, "\n%s: cleaning up\n", s)
			Cleanup()
			os.Exit(130)
		}()
	})
}

// Fatal cleans up and exits with a message.
func Fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	Cleanup()
	os.Exit(1)
}

// Run runs a command and returns its combined output.
func Run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Must is Run that exits (after cleaning up) on failure.
func Must(args ...string) string {
	out, err := Run(args...)
	if err != nil {
		Fatal("%v", err)
	}
	return out
}

// NetNS creates a named network namespace with lo up and registers its
// deletion.
func NetNS(suffix string) string {
	name := Name(suffix)
	Must("ip", "netns", "add", name)
	Defer(func() {
		// A process left in the namespace (a WireGuard data plane outlives
		// its daemon, by design) would keep it and its devices alive.
		if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		Run("ip", "netns", "delete", name)
	})
	Must("ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// TempDir makes a scratch directory removed at Cleanup.
func TempDir() string {
	d, err := os.MkdirTemp("", Prefix+ID+"-")
	if err != nil {
		Fatal("%v", err)
	}
	Defer(func() { os.RemoveAll(d) })
	return d
}

// LoadAverage is /proc/loadavg's first three fields.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
