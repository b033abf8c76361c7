package paths

import (
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
	long := "/" + strings.Repeat("d", 120)
	cases := []struct{ goos, dir, def, want string }{
		{"linux", "/var/lib/zlayer", "/var/lib/zlayer", "/var/run/zlayer-overlayd.sock"},
		{"linux", "/var/lib/zlayer/", "/var/lib/zlayer", "/var/run/zlayer-overlayd.sock"},
		{"linux", "/srv/z", "/var/lib/zlayer", "/srv/z/run/zlayer-overlayd.sock"},
		{"darwin", "/Users/a/.zlayer", "/Users/a/.zlayer", "/Users/a/.zlayer/run/zlayer-overlayd.sock"},
		{"windows", `C:\x`, `C:\ProgramData\ZLayer`, PipeName},
		{"linux", "/tmp/x", "/var/lib/zlayer", "/tmp/x/run/zlayer-overlayd.sock"},
	}
	for _, c := range cases {
		if got := defaultSocket(c.goos, c.dir, c.def); got != c.want {
			t.Errorf("%s %q: got %q want %q", c.goos, c.dir, got, c.want)
		}
	}
	got := defaultSocket("linux", long, "/var/lib/zlayer")
	if want := "/tmp/zlayer-overlayd-"; !strings.HasPrefix(got, want) || len(got) != len(want)+16+5 {
		t.Errorf("long dir: got %q", got)
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
