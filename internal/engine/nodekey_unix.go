//go:build unix

package engine

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// trustedKeyFile accepts a private-key file only when nobody but its owner
// can read or change it and the owner is root (or the user this daemon runs
// as, for an unprivileged test daemon): a key someone else could have read
// is not a secret, and one someone else could have written is not ours.
func trustedKeyFile(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file; refusing to read a private key from it", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: its WireGuard private key is readable or writable by other users; refusing it (chmod 600 %s, and consider the key exposed)", path, perm, path)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not root; refusing its private key (chown root %s)", path, st.Uid, path)
	}
	return nil
}
