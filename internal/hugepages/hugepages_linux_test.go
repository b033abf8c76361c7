package hugepages

import (
	"os"
	"strings"
	"testing"
)

func thpEnabled(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "THP_enabled:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Skip("this kernel's /proc status has no THP_enabled (before Linux 5.0)")
	return ""
}

// Needs no privilege: any process may refuse huge pages for itself.
func TestRefuse(t *testing.T) {
	if err := Refuse(); err != nil {
		t.Fatal(err)
	}
	if got := thpEnabled(t); got != "0" {
		t.Fatalf("THP_enabled: %s after Refuse, want 0", got)
	}
}
