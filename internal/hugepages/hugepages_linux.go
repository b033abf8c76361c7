package hugepages

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"

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

func readRefused(pid int) (refused, known bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false, false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("THP_enabled:")); ok {
			return string(bytes.TrimSpace(v)) == "0", true, nil
		}
	}
	return false, false, nil
}
