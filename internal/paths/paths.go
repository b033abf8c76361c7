// Package paths computes the default data directory and socket path exactly
// as the ZLayer main daemon does (reference behaviour §1.1), so the daemon
// finds us without configuration.
package paths

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
)

// PipeName is the Windows named pipe the main daemon connects to.
const PipeName = `\\.\pipe\zlayer-overlayd`

// sunPathMax is the usable length of sockaddr_un.sun_path the reference
// budgets for (108 minus NUL and slack).
const sunPathMax = 103

// PlatformDataDir is the data directory of this platform ignoring
// $ZLAYER_DATA_DIR; the reference compares against it to pick the
// well-known socket path.
func PlatformDataDir() string {
	return platformDataDir(runtime.GOOS, os.Geteuid(), os.Getenv("HOME"), os.Getenv("ProgramData"))
}

func platformDataDir(goos string, euid int, home, programData string) string {
	switch goos {
	case "windows":
		if programData == "" {
			programData = `C:\ProgramData`
		}
		return programData + `\ZLayer`
	case "darwin":
		if home == "" {
			return "/var/lib/zlayer"
		}
		return filepath.Join(home, ".zlayer")
	default:
		if euid == 0 || home == "" {
			return "/var/lib/zlayer"
		}
		return filepath.Join(home, ".zlayer")
	}
}

// DefaultDataDir is $ZLAYER_DATA_DIR when set, else PlatformDataDir.
func DefaultDataDir() string {
	if d := os.Getenv("ZLAYER_DATA_DIR"); d != "" {
		return d
	}
	return PlatformDataDir()
}

// DefaultSocket is the socket (or pipe) a daemon started with dataDir
// listens on: the main daemon's path rules, except when the path they give
// would be too long for a socket address (see below).
func DefaultSocket(dataDir string) string {
	return defaultSocket(runtime.GOOS, dataDir, PlatformDataDir(), os.Geteuid(), os.Getenv("XDG_RUNTIME_DIR"))
}

// SocketCandidates are the paths a client tries for a daemon started with
// dataDir, most likely first. They differ from DefaultSocket's single
// answer only when the data directory is too long for a socket path: then
// the daemon's choice depends on whether it runs as root, which the client
// cannot know.
func SocketCandidates(dataDir string) []string {
	first := DefaultSocket(dataDir)
	out := []string{first}
	if runtime.GOOS == "windows" {
		return out
	}
	for _, euid := range []int{0, os.Geteuid()} {
		if p := defaultSocket(runtime.GOOS, dataDir, PlatformDataDir(), euid, os.Getenv("XDG_RUNTIME_DIR")); p != first && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func defaultSocket(goos, dataDir, platformDefault string, euid int, runtimeDir string) string {
	if goos == "windows" {
		return PipeName
	}
	if filepath.Clean(dataDir) == filepath.Clean(platformDefault) {
		if goos == "darwin" {
			return filepath.Join(platformDefault, "run", "zlayer-overlayd.sock")
		}
		return "/var/run/zlayer-overlayd.sock"
	}
	p := filepath.Join(dataDir, "run", "zlayer-overlayd.sock")
	if len(p) <= sunPathMax {
		return p
	}
	// The reference falls back to /tmp/zlayer-overlayd-<fnv>.sock, a name
	// anyone can compute, in a directory anyone can write: a local user
	// could create it first and be the daemon clients talk to. We use a
	// directory only the daemon's user can write, with the same name.
	name := fmt.Sprintf("zlayer-overlayd-%016x.sock", fnv1a(dataDir, "overlayd"))
	if euid == 0 {
		return "/var/run/" + name
	}
	if filepath.IsAbs(runtimeDir) {
		if q := filepath.Join(runtimeDir, name); len(q) <= sunPathMax {
			return q
		}
	}
	// Too long, and nowhere private to go: listening fails with an error
	// that says so, and --socket names a shorter path.
	return p
}

// fnv1a is FNV-1a 64 over the concatenated parts, the hash the reference
// uses to shorten paths.
func fnv1a(parts ...string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, p := range parts {
		for i := 0; i < len(p); i++ {
			h ^= uint64(p[i])
			h *= 0x100000001b3
		}
	}
	return h
}
