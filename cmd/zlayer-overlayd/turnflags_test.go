package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestTURNFlags(t *testing.T) {
	dir := t.TempDir()
	const secret = "turn-pa55word-xyzzy"
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte(secret+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o644) // whatever the umask
	twoLines := filepath.Join(dir, "two")
	os.WriteFile(twoLines, []byte(secret+"\nmore\n"), 0o600)

	o, err := parseFlags([]string{"--turn-server", "192.0.2.1:3478", "--turn-server", "turn.example", "--turn-username", "node", "--turn-password-file", good}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.turn) != 2 || o.turn[0].Address != "192.0.2.1:3478" || o.turn[1].Username != "node" || o.turn[1].Credential != secret {
		t.Fatalf("turn servers %#v", o.turn)
	}
	if o.natRefresh != 60e9 {
		t.Fatalf("default --nat-refresh-interval %v, want 60s like the reference", o.natRefresh)
	}

	bad := [][]string{
		{"--turn-server", "192.0.2.1:3478"},
		{"--turn-server", "192.0.2.1:3478", "--turn-username", "node"},
		{"--turn-username", "node", "--turn-password-file", good},
		{"--turn-server", "192.0.2.1:0", "--turn-username", "node", "--turn-password-file", good},
		{"--turn-server", "192.0.2.1", "--turn-username", "node", "--turn-password-file", filepath.Join(dir, "missing")},
		{"--turn-server", "192.0.2.1", "--turn-username", "node", "--turn-password-file", twoLines},
		{"--nat-refresh-interval", "10ms"},
	}
	if runtime.GOOS != "windows" {
		bad = append(bad, []string{"--turn-server", "192.0.2.1", "--turn-username", "node", "--turn-password-file", open})
	}
	for _, args := range bad {
		var stderr bytes.Buffer
		if code := run(args, &bytes.Buffer{}, &stderr); code != 2 || !strings.Contains(stderr.String(), "--") {
			t.Errorf("%q: code %d, stderr %q", args, code, stderr.String())
		}
		if strings.Contains(stderr.String(), secret) {
			t.Errorf("%q: the error quotes the password", args)
		}
	}
	var stderr bytes.Buffer
	run([]string{"--turn-server", "192.0.2.1", "--turn-username", "node", "--turn-password-file", open}, &bytes.Buffer{}, &stderr)
	if runtime.GOOS != "windows" && !strings.Contains(stderr.String(), "chmod 600") {
		t.Errorf("a readable password file: %q does not say what to do", stderr.String())
	}
}
