package linuxnet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
)

const procSys = "/proc/sys/"

// forwardingKnobs are the sysctls EnableForwarding turns on, in the order it reports them.
var forwardingKnobs = []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"}

// EnableForwarding turns on IPv4 and IPv6 forwarding in the calling thread's network
// namespace and returns the sysctls it actually changed (dotted names). A kernel without
// IPv6 is not an error; the IPv6 knob is skipped.
func EnableForwarding() (changed []string, err error) {
	for _, knob := range forwardingKnobs {
		cur, err := os.ReadFile(procSys + knob)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(knob, "net/ipv6/") {
				continue
			}
			return changed, fmt.Errorf("enable forwarding: read %s: %w", dotted(knob), err)
		}
		if string(bytes.TrimSpace(cur)) == "1" {
			continue
		}
		if err := os.WriteFile(procSys+knob, []byte("1"), 0); err != nil {
			return changed, fmt.Errorf("enable forwarding: set %s=1: %w", dotted(knob), err)
		}
		changed = append(changed, dotted(knob))
	}
	return changed, nil
}

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
