package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

const unitPath = "systemd/zlayer-overlayd.service"

// unit is a systemd unit file: section → key → values (a key may repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) (unit, string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse line %q", path, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u, string(raw)
}

func (u unit) get(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// unitCaps is the unit's capability bounding set.
func unitCaps(u unit) []string {
	return strings.Fields(u.get("Service", "CapabilityBoundingSet"))
}

func TestUnitPromises(t *testing.T) {
	u, raw := parseUnit(t, unitPath)
	for _, c := range []struct{ section, key, want string }{
		{"Service", "Restart", "always"},
		{"Service", "Type", "notify"},
		{"Service", "NotifyAccess", "main"},
		{"Service", "KillSignal", "SIGTERM"},
		// Userspace WireGuard data planes outlive restarts.
		{"Service", "KillMode", "process"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "StateDirectory", "zlayer"},
		{"Service", "RuntimeDirectory", "wireguard"},
		{"Service", "RuntimeDirectoryPreserve", "yes"},
		{"Service", "RestrictNamespaces", "net"},
		{"Unit", "StartLimitIntervalSec", "0"},
		{"Install", "WantedBy", "multi-user.target"},
	} {
		if got := u.get(c.section, c.key); got != c.want {
			t.Errorf("[%s] %s=%q, want %q", c.section, c.key, got, c.want)
		}
	}
	// The main daemon recognises its sister process by this exact name.
	exec := strings.Fields(u.get("Service", "ExecStart"))
	if len(exec) == 0 || filepath.Base(exec[0]) != "zlayer-overlayd" {
		t.Errorf("ExecStart %q does not run a binary named zlayer-overlayd", u.get("Service", "ExecStart"))
	}
	if fams := strings.Fields(u.get("Service", "RestrictAddressFamilies")); !slices.Contains(fams, "AF_NETLINK") || !slices.Contains(fams, "AF_UNIX") {
		t.Errorf("RestrictAddressFamilies %v must keep netlink and the control socket", fams)
	}
	// Options that would break the daemon's work.
	for _, k := range []string{"ProtectKernelTunables", "PrivateNetwork", "PrivateDevices", "PrivateTmp", "PrivateUsers", "DynamicUser"} {
		if v := u.get("Service", k); v != "" && v != "no" && v != "false" {
			t.Errorf("%s=%s would break netlink, namespaces, TUN or the sysctls", k, v)
		}
	}
	// Every capability is justified in the unit's comments.
	caps := unitCaps(u)
	if len(caps) == 0 {
		t.Fatal("no CapabilityBoundingSet: the daemon would run with every capability")
	}
	for _, c := range caps {
		if strings.Count(raw, c) < 2 {
			t.Errorf("%s is granted but its use is not explained in a comment", c)
		}
	}
}

// TestUnitVerifies runs systemd-analyze verify, which rejects unknown keys,
// bad values and a missing binary. It prints warnings with exit status 0,
// so any output is a failure.
func TestUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
	}
	u, raw := parseUnit(t, unitPath)
	bin := testbin.Build(t, "zlayer-overlayd")
	// verify checks that ExecStart's binary exists: point it at the one
	// just built, change nothing else.
	installed := strings.Fields(u.get("Service", "ExecStart"))[0]
	dir := t.TempDir()
	path := filepath.Join(dir, "zlayer-overlayd.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(raw, installed, bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", path)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
