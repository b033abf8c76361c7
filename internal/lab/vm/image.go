//go:build linux

package vm

import (
	"bufio"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// root is the guest's file system while it is being assembled in a host
// directory; writeCPIO turns it into the initramfs the kernel unpacks
// into its root file system.
type root struct {
	dir string
}

func newRoot(dir string) (*root, error) {
	r := &root{dir: dir}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// The guest resolves paths the way the host does (/lib → usr/lib on a
	// merged-/usr system), so a library found by the host's ldd is found
	// by the guest's loader at the same path.
	for _, top := range []string{"/bin", "/sbin", "/lib", "/lib64"} {
		if err := r.mirrorDir(top); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "root", "var", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	// /var/run is /run, as on every current distribution: the daemon,
	// ip netns and wg all use both spellings.
	return r, os.Symlink("../run", filepath.Join(dir, "var", "run"))
}

// path is host path p inside the root.
func (r *root) path(p string) string { return filepath.Join(r.dir, p) }

// mirrorDir creates host directory dir (absolute) in the root, with every
// component that is a symlink on the host a symlink in the root too.
func (r *root) mirrorDir(dir string) error {
	dir = filepath.Clean(dir)
	if dir == "/" {
		return nil
	}
	if err := r.mirrorDir(filepath.Dir(dir)); err != nil {
		return err
	}
	in := r.path(dir)
	if _, err := os.Lstat(in); err == nil {
		return nil
	}
	st, err := os.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return os.Mkdir(in, 0o755)
	case err != nil:
		return err
	case st.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(dir)
		if err != nil {
			return err
		}
		abs := target
		if !filepath.IsAbs(abs) {
			abs = filepath.Join(filepath.Dir(dir), target)
		}
		// Relative in the root, so that writing through it from the
		// host stays inside the root.
		rel, err := filepath.Rel(filepath.Dir(dir), abs)
		if err != nil {
			return err
		}
		if err := os.Symlink(rel, in); err != nil {
			return err
		}
		return r.mirrorDir(abs)
	default:
		return os.Mkdir(in, 0o755)
	}
}

// copyFile copies host file src (following symlinks) to dst in the root.
func (r *root) copyFile(src, dst string, mode fs.FileMode) error {
	if err := r.mirrorDir(filepath.Dir(dst)); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(r.path(dst), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (r *root) writeFile(dst string, content string, mode fs.FileMode) error {
	if err := r.mirrorDir(filepath.Dir(dst)); err != nil {
		return err
	}
	return os.WriteFile(r.path(dst), []byte(content), mode)
}

// addBinary copies an executable of the host to the same path in the
// root, with the shared libraries and loader ldd names for it.
func (r *root) addBinary(ctx context.Context, path string) error {
	if err := r.copyFile(path, path, 0o755); err != nil {
		return err
	}
	dynamic, err := isDynamic(path)
	if err != nil || !dynamic {
		return err
	}
	out, err := exec.CommandContext(ctx, "ldd", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ldd %s: %v\n%s", path, err, out)
	}
	libs, err := parseLdd(string(out))
	if err != nil {
		return fmt.Errorf("ldd %s: %w", path, err)
	}
	for _, lib := range libs {
		if _, err := os.Lstat(r.path(lib)); err == nil {
			continue
		}
		if err := r.copyFile(lib, lib, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// isDynamic tells whether an ELF file needs a program interpreter.
func isDynamic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// parseLdd returns the absolute paths of the libraries and the loader in
// ldd's output ("libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)",
// "/lib64/ld-linux-x86-64.so.2 (0x…)"); the vDSO has no file.
func parseLdd(out string) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "linux-vdso") || strings.HasPrefix(line, "statically linked") {
			continue
		}
		if strings.Contains(line, "=> not found") {
			return nil, fmt.Errorf("missing library: %s", line)
		}
		if _, after, ok := strings.Cut(line, "=> "); ok {
			line = after
		}
		if p, _, _ := strings.Cut(line, " ("); strings.HasPrefix(p, "/") {
			libs = append(libs, p)
		}
	}
	return libs, nil
}

// addTree copies host directory src to dst in the root, keeping symlinks;
// skip, when it returns true for a path relative to src, leaves it out.
func (r *root) addTree(src, dst string, skip func(rel string, d fs.DirEntry) bool) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if skip != nil && rel != "." && skip(rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(r.path(to), 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, r.path(to))
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return r.copyFile(p, to, info.Mode().Perm())
		}
		return nil
	})
}

// writeCPIO archives the root as a newc cpio file, the format the kernel
// unpacks from an initramfs. It is left uncompressed: decompressing in an
// emulated CPU costs more than the bytes do.
func (r *root) writeCPIO(ctx context.Context, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "sh", "-c", "find . -mindepth 1 -print0 | cpio --null --create --format=newc --quiet")
	cmd.Dir = r.dir
	cmd.Stdout, cmd.Stderr = f, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio: %v\n%s", err, stderr.String())
	}
	return f.Close()
}
