package linuxnet

import (
	"fmt"
	"os"
	"path"
	"strings"
)

const procSys = "/proc/sys/"

// SetSysctl writes value to one sysctl of the calling thread's network namespace. name is
// either dotted ("net.ipv4.conf.all.rp_filter") or slash-separated relative to /proc/sys
// ("net/ipv4/conf/zl-web.b/rp_filter"); interface names containing dots need the slash form.
func SetSysctl(name, value string) error {
	p, err := sysctlPath(name)
	if err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(value), 0); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

func sysctlPath(name string) (string, error) {
	rel := name
	if !strings.Contains(rel, "/") {
		rel = strings.ReplaceAll(rel, ".", "/")
	}
	if rel == "" || strings.HasPrefix(rel, "/") || path.Clean(rel) != rel || rel == "." || strings.HasPrefix(rel, "../") || rel == ".." {
		return "", fmt.Errorf("sysctl name %q is not a clean path below /proc/sys", name)
	}
	return procSys + rel, nil
}

func dotted(knob string) string { return strings.ReplaceAll(knob, "/", ".") }
