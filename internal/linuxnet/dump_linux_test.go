package linuxnet

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestRetryDump(t *testing.T) {
	// dumper returns ErrDumpInterrupted (with partial data, as the library does) for the
	// first `interrupts` calls, then the full result.
	dumper := func(interrupts int, final error) (func() ([]int, error), *int) {
		calls := 0
		return func() ([]int, error) {
			calls++
			if calls <= interrupts {
				return []int{1}, netlink.ErrDumpInterrupted
			}
			return []int{1, 2, 3}, final
		}, &calls
	}

	for interrupts := range maxDumpAttempts {
		dump, calls := dumper(interrupts, nil)
		got, err := retryDump("test dump", dump)
		if err != nil || len(got) != 3 || *calls != interrupts+1 {
			t.Errorf("%d interruptions: got %v, %v after %d calls; want the full result after %d calls",
				interrupts, got, err, *calls, interrupts+1)
		}
	}

	dump, calls := dumper(1<<30, nil)
	got, err := retryDump("test dump", dump)
	if !errors.Is(err, netlink.ErrDumpInterrupted) || got != nil || *calls != maxDumpAttempts {
		t.Errorf("endless interruptions: got %v, %v after %d calls; want no data and ErrDumpInterrupted after %d calls",
			got, err, *calls, maxDumpAttempts)
	}

	dump, calls = dumper(0, unix.EPERM)
	if got, err := retryDump("test dump", dump); !errors.Is(err, unix.EPERM) || got != nil || *calls != 1 {
		t.Errorf("other error: got %v, %v after %d calls; want EPERM at once without data", got, err, *calls)
	}
}
