package engine

import (
	"fmt"
	"io/fs"
)

// trustedKeyFile on Windows only checks the file is a file: the data
// directory's ACL (SYSTEM and Administrators) is what protects it, and
// ZLayer writes it there.
func trustedKeyFile(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file; refusing to read a private key from it", path)
	}
	return nil
}
