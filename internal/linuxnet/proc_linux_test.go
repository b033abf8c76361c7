package linuxnet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// statLine builds a /proc/<pid>/stat line with the given comm and starttime; every other
// numeric field is distinct so a miscounted field cannot accidentally be right.
func statLine(comm string, start uint64) string {
	fields := []string{"4242", "(" + comm + ")", "S"}
	for i := 4; i <= 52; i++ {
		if i == 22 {
			fields = append(fields, strconv.FormatUint(start, 10))
			continue
		}
		fields = append(fields, strconv.Itoa(1000+i))
	}
	return strings.Join(fields, " ") + "\n"
}

func TestParseStatStartTime(t *testing.T) {
	for _, comm := range []string{"sleep", "a) (b c", ")", "(", ") (", "x y z", "))((", ""} {
		got, err := parseStatStartTime([]byte(statLine(comm, 987654321)))
		if err != nil || got != 987654321 {
			t.Errorf("comm %q: got %d, %v; want 987654321", comm, got, err)
		}
	}
	for name, line := range map[string]string{
		"empty":            "",
		"no parentheses":   "4242 sleep S 1 2 3",
		"truncated":        "4242 (sleep) S 1 2 3 4 5",
		"non-numeric time": strings.Replace(statLine("x", 1), " 1 ", " abc ", 1),
	} {
		if got, err := parseStatStartTime([]byte(line)); err == nil {
			t.Errorf("%s: got %d, want an error", name, got)
		}
	}
}

func TestProcessStartTimeOddComm(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("skipped: needs the sleep binary")
	}
	// A process's comm is the base name it was executed by, so a symlink gives it one with
	// spaces and ") (", which breaks naive whitespace splitting of /proc/<pid>/stat.
	const comm = "zl) (x y"
	link := filepath.Join(t.TempDir(), comm)
	if err := os.Symlink(sleep, link); err != nil {
		t.Fatal(err)
	}
	self, err := ProcessStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// Start returns when the exec has begun: the kernel releases the
	// parent before it sets the new comm, so a slow machine can still
	// show the parent's for a moment.
	var got []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got, _ = os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		if strings.TrimSpace(string(got)) == comm || time.Now().After(deadline) {
			break
		}
	}
	if strings.TrimSpace(string(got)) != comm {
		t.Fatalf("child comm = %q, want %q", got, comm)
	}
	start, err := ProcessStartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// Independent bounds: not before this test process started, not after now
	// (/proc/uptime in seconds; clock ticks are USER_HZ = 100 on Linux).
	up, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	secs, err := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	if now := uint64(secs*100) + 1; start < self || start > now {
		t.Errorf("start time of the child = %d ticks; want between this process's %d and now %d", start, self, now)
	}
	if _, err := ProcessStartTime(0); err == nil {
		t.Error("ProcessStartTime(0) succeeded")
	}
}

func TestProcessStartTimeExited(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("skipped: needs the true binary")
	}
	if _, err := ProcessStartTime(cmd.Process.Pid); err == nil {
		t.Error("ProcessStartTime of an exited, reaped process succeeded")
	}
	if _, err := NetnsInode(cmd.Process.Pid); err == nil {
		t.Error("NetnsInode of an exited, reaped process succeeded")
	}
}

func TestNetnsInode(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	self, err := NetnsInode(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if want := fileInode(t, "/run/netns/"+os.Getenv(envHostNetns)); self != want {
		t.Errorf("NetnsInode(self) = %d, want the inode of the host namespace file %d", self, want)
	}
	c := newContainer(t, "c1")
	other, err := NetnsInode(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	if other == self {
		t.Errorf("a process in another namespace has the same namespace inode %d", self)
	}
}
