//go:build linux

package main

import (
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// make demo is the README's way to see the overlay work; its story must
// keep working as the daemon changes: two nodes, a mesh, pings through it
// and between containers on each node (every step fails the test through
// t, whose cleanups remove what the lab made).
func TestDemoStory(t *testing.T) {
	if err := checkTools(); err != nil {
		t.Skip("demo: " + err.Error())
	}
	run(t, testbin.Build(t, "zlayer-overlayd"))
}
