//go:build !windows

package store

import (
	"fmt"
	"os"
)

// tightenMode makes the state file private to its owner: it holds WireGuard private keys.
func (s *Store) tightenMode(f *os.File) error {
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: inspecting %s: %w", s.path, err)
	}
	perm := info.Mode().Perm()
	if perm&0o077 == 0 {
		return nil
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("store: %s has mode %04o, which lets other users read private keys, and it could not be changed to 0600: %w", s.path, perm, err)
	}
	s.log.Warn("state file was accessible to other users; changed its mode to 0600",
		"file", s.path, "old_mode", fmt.Sprintf("%04o", perm))
	return nil
}

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
