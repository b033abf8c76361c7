package store

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests below re-execute the test binary as a second process that uses the store, since a
// file lock and a SIGKILL are only meaningful across processes.
const (
	helperEnv     = "STORE_TEST_HELPER"
	helperPathEnv = "STORE_TEST_PATH"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "hold":
		os.Exit(helperHold(os.Getenv(helperPathEnv)))
	case "stream":
		os.Exit(helperStream(os.Getenv(helperPathEnv)))
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// helperHold opens the store, says "ready" and keeps it open until stdin closes.
func helperHold(path string) int {
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// helperStream appends attachment n, n+1, ... (n = how many there are) forever, each in
// its own Update that also sets Node.NodeID to the new count, and prints n after Update
// returns.
func helperStream(path string) int {
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st, err := s.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out := bufio.NewWriter(os.Stdout)
	for n := len(st.Attachments); ; n++ {
		err := s.Update(func(tx *Tx) error {
			node, err := tx.Node()
			if err != nil {
				return err
			}
			node.NodeID = uint64(n + 1)
			return errors.Join(tx.PutNode(node), tx.PutAttachment(Attachment{
				Key: streamKey(n), PID: uint32(n), DNSDomain: strings.Repeat("d", n%200),
			}))
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintln(out, n)
		out.Flush()
	}
}

func streamKey(n int) string { return "linux_pid:" + strconv.Itoa(n) }

func helper(t *testing.T, mode, path string) (*exec.Cmd, io.WriteCloser, *bufio.Scanner) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperPathEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, stdin, bufio.NewScanner(stdout)
}

func TestSecondProcessIsToldTheFileIsInUse(t *testing.T) {
	path := tempPath(t)
	_, stdin, lines := helper(t, "hold", path)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("helper did not open the store: %q %v", lines.Text(), lines.Err())
	}

	_, err := Open(path, Options{Timeout: 100 * time.Millisecond, Logger: quietLogger()})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "another zlayer-overlayd is using "+path) {
		t.Fatalf("err = %v, want ErrLocked saying another zlayer-overlayd is using %s", err, path)
	}

	// Once the holder exits, the file is usable again.
	stdin.Close()
	for lines.Scan() {
	}
	s, err := Open(path, Options{Timeout: 5 * time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open after the holder exited: %v", err)
	}
	s.Close()
}

func TestSIGKILLDuringUpdatesLeavesACommittedPrefix(t *testing.T) {
	path := tempPath(t)
	acked := 0
	for round, killAfter := range []int{1, 37, 150} {
		cmd, _, lines := helper(t, "stream", path)
		var last int
		seen := 0
		for seen < killAfter && lines.Scan() {
			last, _ = strconv.Atoi(lines.Text())
			seen++
		}
		if seen < killAfter {
			t.Fatalf("round %d: helper stopped after %d updates: %v", round, seen, lines.Err())
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Acknowledgements already in the pipe are updates that returned before the kill.
		for lines.Scan() {
			last, _ = strconv.Atoi(lines.Text())
		}
		cmd.Wait()
		acked = last + 1

		s, err := Open(path, Options{Logger: quietLogger()})
		if err != nil {
			t.Fatalf("round %d: the file does not open after SIGKILL: %v", round, err)
		}
		st, err := s.Load()
		s.Close()
		if err != nil {
			t.Fatalf("round %d: Load after SIGKILL: %v", round, err)
		}
		n := len(st.Attachments)
		// The helper commits one update at a time, so at most the one in flight may have
		// committed without being acknowledged.
		if n < acked || n > acked+1 {
			t.Fatalf("round %d: %d updates acknowledged, %d stored", round, acked, n)
		}
		for i := range n {
			if a, ok := st.Attachments[streamKey(i)]; !ok || a.PID != uint32(i) {
				t.Fatalf("round %d: update %d of %d missing: the stored updates are not a prefix", round, i, n)
			}
		}
		if st.Node.NodeID != uint64(n) {
			t.Fatalf("round %d: node counter %d but %d attachments: an update was torn", round, st.Node.NodeID, n)
		}
	}
}
