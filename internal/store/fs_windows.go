//go:build windows

package store

import "os"

// tightenMode has nothing to do on Windows: there are no POSIX mode bits, and the file
// inherits the ACL of the data directory (under ProgramData, SYSTEM and Administrators only),
// which is where access to the keys is decided.
func (s *Store) tightenMode(*os.File) error { return nil }

// syncDir has nothing to do on Windows: a directory cannot be opened for flushing there, and
// NTFS journals the directory entry of a created file itself.
func syncDir(string) error { return nil }
