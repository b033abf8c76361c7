package nstest

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OnThreadAs runs fn on an OS thread whose effective uid and gid and
// supplementary groups are uid, gid and groups, and returns fn's error.
// Sockets and files fn creates belong to that user, and the kernel records
// it as the peer of the sockets fn connects or listens on, which is how
// tests play another local user without a helper binary. Only that thread
// changes: the raw system calls, unlike syscall.Setresuid, do not reach
// the process's other threads, and the thread is retired when fn returns.
// It is never the main thread, whose credentials /proc/<pid> reports for
// the whole process. It needs root.
func OnThreadAs(uid, gid uint32, groups []uint32, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread: /proc/<pid> shows its credentials as the
			// process's, and the runtime never retires it. Hold it while
			// another thread does the work.
			errc <- OnThreadAs(uid, gid, groups, fn)
			runtime.UnlockOSThread()
			return
		}
		// Never unlocked from here: the thread dies with the goroutine.
		var list unsafe.Pointer
		if len(groups) > 0 {
			list = unsafe.Pointer(&groups[0])
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(list), 0); e != 0 {
			errc <- fmt.Errorf("setgroups on the test thread: %w", e)
			return
		}
		// The gid first: once the euid is not 0 the thread may not change it.
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("setresgid on the test thread: %w", e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("setresuid on the test thread: %w", e)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
