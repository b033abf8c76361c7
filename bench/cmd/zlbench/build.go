//go:build linux

package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/zlayer/zlayer-overlayd/bench/internal/benchlib"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binaries builds zlayer-overlayd, zlayer-cni and the echo server once per run, from
// the module this benchmark lives in.
func binaries() (dir string, err error) {
	buildOnce.Do(func() {
		buildDir = benchlib.TempDir()
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = fmt.Errorf("find the module: %v", err)
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		benchlib.Defer(cancel) // an interrupted run stops the build too
		cmd := exec.CommandContext(ctx, "go", "build", "-o", buildDir+"/", "./cmd/zlayer-overlayd", "./cmd/zlayer-cni", "./bench/echo")
		cmd.Dir = strings.TrimSpace(string(root))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	return buildDir, buildErr
}

func daemonBin() (string, error) {
	d, err := binaries()
	return filepath.Join(d, "zlayer-overlayd"), err
}

func cniPluginBin() (string, error) {
	d, err := binaries()
	return filepath.Join(d, "zlayer-cni"), err
}
