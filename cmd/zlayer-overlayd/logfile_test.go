package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotatingFileKeepsTwoBoundedGenerations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "zlayer-overlayd.log")
	r, err := openRotating(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := range 25 {
		line := strings.Repeat(string(rune('a'+i)), 20) + "\n" // 21 bytes
		lines = append(lines, line)
		if _, err := r.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	if len(cur) > 100 || len(old) > 100 {
		t.Errorf("a generation exceeds the bound: %d and %d bytes", len(cur), len(old))
	}
	// At least the newest max bytes of whole records are there, in order.
	both := string(old) + string(cur)
	if !strings.HasSuffix(both, strings.Join(lines[len(lines)-4:], "")) {
		t.Errorf("recent records lost or reordered:\n%s", both)
	}
	if !bytes.HasSuffix(cur, []byte(lines[24])) {
		t.Errorf("last record not last: %q", cur)
	}
	if _, err := r.Write([]byte("x\n")); err == nil {
		t.Error("write after Close succeeded")
	}

	// Reopening appends to what is there.
	r, err = openRotating(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	r.Write([]byte("again\n"))
	r.Close()
	if b, _ := os.ReadFile(path); !bytes.HasPrefix(b, cur) || !bytes.HasSuffix(b, []byte("again\n")) {
		t.Errorf("reopen did not append: %q", b)
	}
}

func TestRotatingFileTakesOversizedRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	r, err := openRotating(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	big := bytes.Repeat([]byte("z"), 50)
	if n, err := r.Write(big); err != nil || n != 50 {
		t.Fatalf("write of an oversized record: %d, %v", n, err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, big) {
		t.Errorf("oversized record not kept whole: %q", b)
	}
}
