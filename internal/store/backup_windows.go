//go:build windows

package store

import (
	"io/fs"
	"os"

	"golang.org/x/sys/windows"
)

// checkBackupDir: on Windows the backup's own ACL (restrictBackup) decides who can read it,
// whatever the directory allows.
func checkBackupDir(string, fs.FileInfo) error { return nil }

func checkBackupOwner(string, fs.FileInfo) error { return nil }

// backupSDDL gives the backup to SYSTEM and Administrators alone, nothing inherited, like the
// state file (which the daemon restricts the same way at start).
const backupSDDL = "D:P(A;;FA;;;SY)(A;;FA;;;BA)"

// restrictBackup sets that ACL before anything is written to the file.
func restrictBackup(f *os.File) error {
	sd, err := windows.SecurityDescriptorFromString(backupSDDL)
	if err != nil {
		return err
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		return err
	}
	return windows.SetSecurityInfo(windows.Handle(f.Fd()), windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil)
}
