package main

import (
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/hugepages"
)

// The daemon's resident memory is what operators watch and what issue 22's
// 5,000-peer goal bounds: on a kernel that gives huge pages unasked (THP
// "always", Debian's default), khugepaged would make resident again the
// heap the Go runtime returned.
func TestDaemonRefusesHugePages(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	refused, known, err := hugepages.Refused(d.cmd.Process.Pid)
	switch {
	case err != nil:
		t.Fatal(err)
	case !known:
		t.Skip("this kernel's /proc status has no THP_enabled (before Linux 5.0)")
	case !refused:
		t.Fatal("the daemon may be given transparent huge pages (THP_enabled is not 0 in its /proc status)")
	}
}
