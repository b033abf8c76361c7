//go:build linux

package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// moduleTrees are the parts of a kernel's modules that go into the guest:
// what netlink and netfilter requests load (networking, netfilter, TUN,
// veth, bridge, WireGuard and their crypto and library dependencies).
// Which modules a request needs is left to depmod and modprobe.
var moduleTrees = []string{"kernel/net", "kernel/drivers/net", "kernel/lib", "kernel/crypto", "kernel/arch", "kernel/drivers/char", "kernel/drivers/virtio"}

// decompressors are the tools that unpack compressed modules in place, by
// suffix. Newer Debian kernels ship .ko.xz; busybox's modprobe would hand
// the kernel the compressed file first (which it rejects with "Invalid ELF
// header magic") and then decompress it in the emulated CPU.
var decompressors = map[string][]string{
	".ko.xz":  {"xz", "-d", "-q"},
	".ko.zst": {"zstd", "-d", "-q", "--rm"},
	".ko.gz":  {"gzip", "-d", "-q"},
}

// decompressModules unpacks every compressed module under dir, so the
// guest loads plain .ko files.
func decompressModules(ctx context.Context, dir string) error {
	found := map[string][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		for suffix := range decompressors {
			if strings.HasSuffix(p, suffix) {
				found[suffix] = append(found[suffix], p)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for suffix, files := range found {
		tool := decompressors[suffix]
		for len(files) > 0 {
			n := min(len(files), 500)
			if out, err := exec.CommandContext(ctx, tool[0], append(tool[1:], files[:n]...)...).CombinedOutput(); err != nil {
				return fmt.Errorf("decompress %s modules with %s: %v\n%s", suffix, tool[0], err, out)
			}
			files = files[n:]
		}
	}
	return nil
}

// kernelCPIO archives the kernel's modules (with a modules.dep depmod
// computed for exactly them) and the suites to run.
func (l *Lab) kernelCPIO(ctx context.Context, k *Kernel, suites []Suite, out string) error {
	dir := filepath.Join(l.cfg.WorkDir, "kernel-"+k.Release)
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	r, err := newRoot(dir)
	if err != nil {
		return err
	}
	mods := "/lib/modules/" + k.Release
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if err := r.copyFile(filepath.Join(k.ModulesDir(), f), filepath.Join(mods, f), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for _, t := range moduleTrees {
		src := filepath.Join(k.ModulesDir(), t)
		if _, err := os.Stat(src); err != nil {
			continue
		}
		if err := r.addTree(src, filepath.Join(mods, t), nil); err != nil {
			return err
		}
	}
	if err := decompressModules(ctx, r.path(mods)); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", r.dir, k.Release).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s %s: %v\n%s", r.dir, k.Release, err, out)
	}
	var script strings.Builder
	for _, s := range suites {
		script.WriteString(s.command() + "\n")
	}
	if err := r.writeFile("/zlvm/suites.sh", script.String(), 0o644); err != nil {
		return err
	}
	return r.writeCPIO(ctx, out)
}
