//go:build linux

package main

import (
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetns runs f on an OS thread that has entered the named namespace:
// sockets f opens live there. The thread goes back to its namespace
// afterwards. It must not die instead: processes started with a
// parent-death signal are killed when the thread that forked them exits,
// and that may have been this one.
func inNetns(name string, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and is discarded with the goroutine
		errc <- nil
	}()
	return <-errc
}

func lookPath(bin string) (string, error) { return exec.LookPath(bin) }
