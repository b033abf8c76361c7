// Package paths computes the default data directory and socket path exactly
// as the ZLayer main daemon does (reference behaviour §1.1), so the daemon
// finds us without configuration.
package paths

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
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

// DefaultSocket is the socket (or pipe) the main daemon expects for dataDir.
func DefaultSocket(dataDir string) string {
	return defaultSocket(runtime.GOOS, dataDir, PlatformDataDir())
}

func defaultSocket(goos, dataDir, platformDefault string) string {
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
	return fmt.Sprintf("/tmp/zlayer-overlayd-%016x.sock", fnv1a(dataDir, "overlayd"))
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
