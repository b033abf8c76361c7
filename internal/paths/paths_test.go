package paths

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestFNVVectors(t *testing.T) {
	for _, c := range []struct {
		dir  string
		want uint64
	}{{"/tmp/x", 0x3c072c31dd7f6210}, {"/var/lib/zlayer", 0x58c2e6aa7dc2cd83}} {
		if got := fnv1a(c.dir, "overlayd"); got != c.want {
			t.Errorf("fnv(%q) = %016x, want %016x", c.dir, got, c.want)
		}
	}
}

func TestDefaultSocket(t *testing.T) {
	cases := []struct{ goos, dir, def, want string }{
		{"linux", "/var/lib/zlayer", "/var/lib/zlayer", "/var/run/zlayer-overlayd.sock"},
		{"linux", "/var/lib/zlayer/", "/var/lib/zlayer", "/var/run/zlayer-overlayd.sock"},
		{"linux", "/srv/z", "/var/lib/zlayer", "/srv/z/run/zlayer-overlayd.sock"},
		{"darwin", "/Users/a/.zlayer", "/Users/a/.zlayer", "/Users/a/.zlayer/run/zlayer-overlayd.sock"},
		{"windows", `C:\x`, `C:\ProgramData\ZLayer`, PipeName},
		{"linux", "/tmp/x", "/var/lib/zlayer", "/tmp/x/run/zlayer-overlayd.sock"},
	}
	for _, c := range cases {
		for _, euid := range []int{0, 1000} {
			if got := defaultSocket(c.goos, c.dir, c.def, euid, "/run/user/1000"); got != c.want {
				t.Errorf("%s %q as uid %d: got %q want %q", c.goos, c.dir, euid, got, c.want)
			}
		}
	}
}

// A data directory too long for a socket path never sends the socket to
// /tmp, where any local user could create it first: root's goes to
// /var/run, another user's to $XDG_RUNTIME_DIR (private to that user), and
// without one it stays in the data directory (listening then fails and
// says so).
func TestLongDataDirSocketIsNeverWorldWritable(t *testing.T) {
	long := "/" + strings.Repeat("d", 120)
	name := fmt.Sprintf("zlayer-overlayd-%016x.sock", fnv1a(long, "overlayd"))
	for _, c := range []struct {
		euid       int
		runtimeDir string
		want       string
	}{
		{0, "", "/var/run/" + name},
		{0, "/run/user/0", "/var/run/" + name},
		{1000, "/run/user/1000", "/run/user/1000/" + name},
		{1000, "", long + "/run/zlayer-overlayd.sock"},
		{1000, "relative", long + "/run/zlayer-overlayd.sock"},
		{1000, "/" + strings.Repeat("r", 90), long + "/run/zlayer-overlayd.sock"},
	} {
		got := defaultSocket("linux", long, "/var/lib/zlayer", c.euid, c.runtimeDir)
		if got != c.want {
			t.Errorf("uid %d, XDG_RUNTIME_DIR %q: got %q want %q", c.euid, c.runtimeDir, got, c.want)
		}
		if strings.HasPrefix(got, "/tmp/") {
			t.Errorf("uid %d: socket in /tmp: %q", c.euid, got)
		}
	}
}

func TestSocketCandidatesCoverRootAndSelf(t *testing.T) {
	long := "/" + strings.Repeat("d", 120)
	got := SocketCandidates(long)
	if got[0] != DefaultSocket(long) {
		t.Fatalf("first candidate %q is not the default %q", got[0], DefaultSocket(long))
	}
	if !slices.Contains(got, defaultSocket(runtime.GOOS, long, PlatformDataDir(), 0, "")) {
		t.Errorf("candidates %q lack root's path", got)
	}
	if short := SocketCandidates("/srv/z"); len(short) != 1 {
		t.Errorf("a short data dir has one path, got %q", short)
	}
}

func TestPlatformDataDir(t *testing.T) {
	cases := []struct {
		goos       string
		euid       int
		home, prog string
		want       string
	}{
		{"linux", 0, "/root", "", "/var/lib/zlayer"},
		{"linux", 1000, "/home/a", "", "/home/a/.zlayer"},
		{"linux", 1000, "", "", "/var/lib/zlayer"},
		{"darwin", 501, "/Users/a", "", "/Users/a/.zlayer"},
		{"windows", 0, "", `D:\PD`, `D:\PD\ZLayer`},
		{"windows", 0, "", "", `C:\ProgramData\ZLayer`},
	}
	for _, c := range cases {
		if got := platformDataDir(c.goos, c.euid, c.home, c.prog); got != c.want {
			t.Errorf("%+v: got %q", c, got)
		}
	}
}

func TestDefaultDataDirHonoursEnv(t *testing.T) {
	t.Setenv("ZLAYER_DATA_DIR", "/opt/zl")
	if got := DefaultDataDir(); got != "/opt/zl" {
		t.Fatalf("got %q", got)
	}
	// The env var does not make a path "the platform default".
	if DefaultSocket("/opt/zl") != "/opt/zl/run/zlayer-overlayd.sock" && PlatformDataDir() != "/opt/zl" {
		t.Fatalf("socket for env data dir: %q", DefaultSocket("/opt/zl"))
	}
}
