package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// Backup writes a consistent copy of the state file to path while the store keeps serving,
// and returns its size. The copy is one read transaction (bbolt's Tx.WriteTo): every update
// committed before it began and none after, whatever runs meanwhile. Readers and writers go
// on in parallel; only a writer that must grow the file waits for the copy to finish.
//
// The copy holds the node's private keys, so the place is checked before anything is
// written: path must be absolute; its directory must exist and, on Unix, belong to root or
// the daemon's user and be writable by nobody else (no /tmp: another user could swap the file
// or plant a link there), and must not be in /proc, /sys or /dev. An existing file at path is
// replaced only when it is itself a state file (an earlier backup) and not the live one.
// The copy is written next to path under a temporary name, created mode 0600 (on Windows with
// SYSTEM and Administrators alone in its ACL), fsync-ed, and renamed over path, so path never
// holds a partial copy.
func (s *Store) Backup(path string) (int64, error) {
	target, err := backupTarget(path, s.path)
	if err != nil {
		return 0, err
	}
	dir := filepath.Dir(target)
	f, err := os.CreateTemp(dir, "."+filepath.Base(target)+".part-*")
	if err != nil {
		return 0, fmt.Errorf("backup: creating a file in %s: %w", dir, err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := restrictBackup(f); err != nil {
		return 0, fmt.Errorf("backup: making %s private: %w", tmp, err)
	}
	var n int64
	err = s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(f)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("backup: copying %s: %w", s.path, err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("backup: flushing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("backup: closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, target); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	done = true
	if err := syncDir(dir); err != nil {
		return n, fmt.Errorf("backup: %s is written, but syncing its directory failed (a power loss now could lose it): %w", target, err)
	}
	return n, nil
}

// backupTarget checks where a backup may go and returns the path to write, with its
// directory's symbolic links resolved.
func backupTarget(path, live string) (string, error) {
	if path == "" {
		return "", errors.New("give the path of the backup file")
	}
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("backup path %q is relative; give an absolute path (the daemon's working directory is not yours)", clip(path))
	}
	clean := filepath.Clean(path)
	dir, err := filepath.EvalSymlinks(filepath.Dir(clean))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("directory %s does not exist; create it first (owned by root, mode 0700)", filepath.Dir(clean))
	}
	if err != nil {
		return "", fmt.Errorf("backup directory %s: %w", filepath.Dir(clean), err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("backup directory %s: %w", dir, err)
	}
	if !info.IsDir() {
		return "", fmt.Errorf("%s is not a directory", dir)
	}
	if err := checkBackupDir(dir, info); err != nil {
		return "", err
	}
	target := filepath.Join(dir, filepath.Base(clean))
	existing, err := os.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return target, nil
	}
	if err != nil {
		return "", fmt.Errorf("backup path %s: %w", target, err)
	}
	switch {
	case existing.IsDir():
		return "", fmt.Errorf("%s is a directory; name a file in it, e.g. %s", target, filepath.Join(target, FileName))
	case existing.Mode()&fs.ModeSymlink != 0:
		return "", fmt.Errorf("%s is a symbolic link; a backup replaces only an earlier backup (a regular file)", target)
	case !existing.Mode().IsRegular():
		return "", fmt.Errorf("%s exists and is not a regular file (mode %s); choose another name", target, existing.Mode())
	}
	if live, err := os.Stat(live); err == nil && os.SameFile(live, existing) {
		return "", fmt.Errorf("%s is the live state file; a backup goes elsewhere, e.g. %s.bak", clean, clean)
	}
	if err := checkBackupOwner(target, existing); err != nil {
		return "", err
	}
	f, err := os.Open(target)
	if err != nil {
		return "", fmt.Errorf("backup path %s: %w", target, err)
	}
	defer f.Close()
	if err := checkBoltHeader(f, existing.Size()); err != nil {
		return "", fmt.Errorf("%s exists and is not a zlayer-overlayd state file (%v); a backup replaces only an earlier backup: remove it or choose another name", target, err)
	}
	return target, nil
}

// clip shortens a path quoted in an error.
func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}
