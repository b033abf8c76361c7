//go:build !windows

package store

import (
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// checkBackupDir refuses directories where a backup of private keys does not belong:
// pseudo file systems, and directories someone other than root or the daemon's user owns or
// can write to (they could replace the file, or plant a link where it is about to be).
func checkBackupDir(dir string, info fs.FileInfo) error {
	for _, pseudo := range []string{"/proc", "/sys", "/dev"} {
		if dir == pseudo || strings.HasPrefix(dir, pseudo+"/") {
			return fmt.Errorf("%s is in %s, which is not a place for files; choose a directory such as /var/backups/zlayer", dir, pseudo)
		}
	}
	if err := ownedBySafeUser(dir, info); err != nil {
		return err
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("directory %s has mode %04o: other users can write to it and could replace the backup or plant a link there; choose a directory only root can write to, e.g. /var/backups/zlayer (mkdir -m 0700)", dir, perm)
	}
	return nil
}

// checkBackupOwner refuses to replace a file another user owns.
func checkBackupOwner(path string, info fs.FileInfo) error { return ownedBySafeUser(path, info) }

func ownedBySafeUser(path string, info fs.FileInfo) error {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if self := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != self {
		return fmt.Errorf("%s belongs to uid %d, which is neither root nor the daemon's user (uid %d); choose a place of root's", path, st.Uid, self)
	}
	return nil
}

// restrictBackup makes the new file private to its owner (CreateTemp already asks for 0600;
// this also holds under an unusual umask-free file system).
func restrictBackup(f *os.File) error { return f.Chmod(0o600) }
