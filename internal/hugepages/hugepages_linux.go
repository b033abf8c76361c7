package hugepages

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func refuse() error {
	// The flag is kept across fork and execve, and khugepaged skips a
	// process that has it, so memory already mapped is covered too.
	if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_THP_DISABLE): %w", err)
	}
	return nil
}
