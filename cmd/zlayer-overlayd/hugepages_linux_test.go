package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// The daemon's resident memory is what operators watch and what issue 22's
// 5,000-peer goal bounds: on a kernel that gives huge pages unasked (THP
// "always", Debian's default), khugepaged would make resident again the
// heap the Go runtime returned.
func TestDaemonRefusesHugePages(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	b, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "THP_enabled:"); ok {
			if strings.TrimSpace(v) != "0" {
				t.Fatalf("the daemon may be given transparent huge pages (THP_enabled:%s)", v)
			}
			return
		}
	}
	t.Skip("this kernel's /proc status has no THP_enabled (before Linux 5.0)")
}
