package linuxnet

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ProcessStartTime returns the start time of pid in clock ticks after boot (field 22 of
// /proc/<pid>/stat). Together with the pid it identifies a process across pid reuse.
func ProcessStartTime(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("start time of pid %d: not a valid pid", pid)
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("start time of pid %d: %w", pid, err)
	}
	t, err := parseStatStartTime(data)
	if err != nil {
		return 0, fmt.Errorf("start time of pid %d: %w", pid, err)
	}
	return t, nil
}

// parseStatStartTime extracts starttime from a /proc/<pid>/stat line. The command name
// (field 2) is in parentheses but may itself contain spaces and parentheses, so the fields
// are counted from the last ')' rather than split from the start.
func parseStatStartTime(stat []byte) (uint64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 || bytes.IndexByte(stat, '(') < 0 {
		return 0, fmt.Errorf("malformed /proc stat line: no parenthesised command name")
	}
	// After ")" come fields 3 (state), 4 (ppid), ...; starttime is field 22.
	const startTimeField = 22
	fields := bytes.Fields(stat[end+1:])
	idx := startTimeField - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("malformed /proc stat line: %d fields after the command name, need more than %d", len(fields), idx)
	}
	t, err := strconv.ParseUint(string(fields[idx]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc stat line: starttime %q: %w", fields[idx], err)
	}
	return t, nil
}

// NetnsInode returns the inode number of pid's network namespace (/proc/<pid>/ns/net). Two
// processes share a network namespace exactly when these numbers are equal.
func NetnsInode(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("network namespace of pid %d: not a valid pid", pid)
	}
	var st unix.Stat_t
	path := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace of pid %d: stat %s: %w", pid, path, err)
	}
	return st.Ino, nil
}
