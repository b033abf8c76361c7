//go:build linux

// Package vm runs the project's privileged test suites inside a QEMU guest
// booting a stock distribution kernel (Debian's cloud kernels), because
// the machines we develop and test on have a kernel without WireGuard:
// the kernel WireGuard backend, which `--wireguard auto` picks on every
// stock distribution, can only be tested there.
//
// A run resolves the kernel through apt (ResolveKernel; the package is
// cached), builds the commands and the suites' test binaries statically
// on the host, and packs them with busybox, the host's observer tools
// (ip, wg, nft, ping, dig, ... with their shared libraries) and the
// kernel's networking modules into an initramfs. The guest's init
// (init.sh) mounts what a host has, runs the suites one by one and reports
// each one's output and exit code on a serial port between markers; Boot
// parses that into a Report. QEMU emulates the CPU (TCG): the machines'
// /dev/kvm exists but hangs a guest, so KVM is used only when asked for.
package vm

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Environment variables that tune the lab.
const (
	// EnvCache is the cache directory (default DefaultCacheDir).
	EnvCache = "ZLAYER_VM_CACHE"
	// EnvAccel is QEMU's -accel: defaultAccel, "kvm", or any other
	// value QEMU takes ("tcg" for multi-threaded TCG).
	EnvAccel = "ZLAYER_VM_ACCEL"
	// EnvMemory is the guest's memory in MiB (default 3072).
	EnvMemory = "ZLAYER_VM_MEMORY"
	// EnvCPU overrides QEMU's -cpu for TCG (default: the Dist's).
	EnvCPU = "ZLAYER_VM_CPU"
)

// defaultAccel runs both vCPUs on one host thread. With a thread per
// vCPU, a CPU could run code another CPU had just rewritten as it was
// before: the 6.12 kernel died with "Oops: int3" in a jump label being
// patched. On two shared host cores one thread is no slower (kernelwg 53 s
// either way).
const defaultAccel = "tcg,thread=single"

// DefaultCacheDir keeps downloaded kernels between runs.
const DefaultCacheDir = "/var/cache/zlayer-vm"

// CacheDir is where kernels are cached: $ZLAYER_VM_CACHE, else
// DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Host tools that go into the guest. The required ones are what the
// kernel WireGuard suites observe with; without an optional one the
// tests that use it skip in the guest, as they do on a host without it.
var (
	requiredTools = []string{"ip", "wg", "nft", "ping", "dig", "nsenter", "unshare", "mount", "umount"}
	optionalTools = []string{"tcpdump", "iperf3", "conntrack", "iptables", "iptables-legacy", "sysctl", "ss", "ethtool", "setpriv", "turnserver", "tc",
		// coreutils' sleep: tests run it under other names, which
		// busybox's multi-call binary does not answer to.
		"sleep"}
	// hostTools are what building the guest needs on the host; each is
	// named with the Debian package that has it.
	hostTools = [][2]string{
		{"qemu-system-x86_64", "qemu-system-x86"},
		{"busybox", "busybox-static"},
		{"cpio", "cpio"},
		{"depmod", "kmod"},
		{"apt-get", "apt"},
		{"dpkg-deb", "dpkg"},
		{"ldd", "libc-bin"},
		{"go", "a Go toolchain"},
	}
)

// Check reports why the lab cannot run on this host, or nil.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (apt cache, and the test binaries run as root in the guest)")
	}
	var missing []string
	for _, t := range hostTools {
		if _, err := exec.LookPath(t[0]); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", t[0], t[1]))
		}
	}
	for _, t := range requiredTools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("needs %s on PATH; `make test-vm` installs them (as root)", strings.Join(missing, ", "))
	}
	bb, _ := exec.LookPath("busybox")
	if dyn, err := isDynamic(bb); err != nil || dyn {
		return fmt.Errorf("needs a static busybox (package busybox-static), %s is dynamically linked", bb)
	}
	return nil
}

// Config of a lab.
type Config struct {
	// ModuleRoot is the checkout whose commands and tests run.
	ModuleRoot string
	// CacheDir holds kernels; WorkDir is scratch space for one run.
	CacheDir, WorkDir string
	// MemoryMiB and CPUs size the guest (defaults 3072 and 2).
	MemoryMiB, CPUs int
	// Accel is QEMU's -accel (default $ZLAYER_VM_ACCEL, else
	// defaultAccel); "kvm" also makes the CPU the host's.
	Accel string
	// Logf receives progress: the kernel, building, each suite's end.
	Logf func(format string, args ...any)
}

func (c Config) withDefaults() Config {
	if c.CacheDir == "" {
		c.CacheDir = CacheDir()
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 3072
		if v := os.Getenv(EnvMemory); v != "" {
			fmt.Sscan(v, &c.MemoryMiB)
		}
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	if c.Accel == "" {
		c.Accel = os.Getenv(EnvAccel)
	}
	if c.Accel == "" {
		c.Accel = defaultAccel
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return c
}

// Lab builds guests for a set of suites; Boot runs some of them on a
// kernel.
type Lab struct {
	cfg   Config
	built map[string]bool // packages with a test binary in the payload
	base  string          // cpio of everything but the kernel's modules and the run list
}

// New builds the payload for suites and the kernel-independent part of
// the guest.
func New(ctx context.Context, cfg Config, suites []Suite) (*Lab, error) {
	cfg = cfg.withDefaults()
	l := &Lab{cfg: cfg, built: map[string]bool{}}
	for _, s := range suites {
		l.built[s.Package] = true
	}
	start := time.Now()
	p, err := buildPayload(ctx, cfg.ModuleRoot, filepath.Join(cfg.WorkDir, "payload"), suites)
	if err != nil {
		return nil, err
	}
	cfg.Logf("vm: built the commands and %d test binaries in %v", len(l.built), time.Since(start).Round(time.Second))
	r, err := newRoot(filepath.Join(cfg.WorkDir, "base"))
	if err != nil {
		return nil, err
	}
	if err := l.fillBase(ctx, r, p); err != nil {
		return nil, err
	}
	l.base = filepath.Join(cfg.WorkDir, "base.cpio")
	if err := r.writeCPIO(ctx, l.base); err != nil {
		return nil, err
	}
	return l, os.RemoveAll(r.dir)
}

//go:embed init.sh
var initScript string

// fillBase puts busybox, the tools, the payload and a minimal /etc into
// the root.
func (l *Lab) fillBase(ctx context.Context, r *root, p *payload) error {
	bb, _ := exec.LookPath("busybox")
	if err := r.copyFile(bb, "/bin/busybox", 0o755); err != nil {
		return err
	}
	if err := os.Symlink("busybox", r.path("/bin/sh")); err != nil {
		return err
	}
	if err := r.writeFile("/init", initScript, 0o755); err != nil {
		return err
	}
	if err := l.addTools(ctx, r); err != nil {
		return err
	}
	for file, content := range etcFiles {
		if err := r.writeFile(file, content, 0o644); err != nil {
			return err
		}
	}
	// Protocol and service names, which nft and tcpdump print with.
	for _, file := range []string{"/etc/protocols", "/etc/services", "/etc/ethertypes"} {
		if err := r.copyFile(file, file, 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := r.addTree(filepath.Join(p.dir, "bin"), guestBin, nil); err != nil {
		return err
	}
	if err := r.addTree(filepath.Join(p.dir, "tests"), guestTests, nil); err != nil {
		return err
	}
	files, err := sourceFiles(ctx, l.cfg.ModuleRoot)
	if err != nil {
		return err
	}
	for _, f := range files {
		src := filepath.Join(l.cfg.ModuleRoot, f)
		st, err := os.Stat(src)
		if err != nil || !st.Mode().IsRegular() {
			continue // deleted in the work tree, or not a file
		}
		if err := r.copyFile(src, filepath.Join(guestSource, f), st.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}

// etcFiles are the guest's configuration: users the tests switch to,
// name resolution that answers locally (no network in the guest).
var etcFiles = map[string]string{
	// tcpdump drops its privileges to user tcpdump once it has opened
	// the capture.
	"/etc/passwd":        "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:100:100::/nonexistent:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
	"/etc/group":         "root:x:0:\ntcpdump:x:100:\nnogroup:x:65534:\n",
	"/etc/hosts":         "127.0.0.1 localhost\n::1 localhost\n",
	"/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
	"/etc/resolv.conf":   "nameserver 127.0.0.1\n",
}

// addTools copies the observer tools with their libraries, and the
// modules iptables loads at run time. /zlvm/tools names every tool, so
// that init removes busybox's look-alike of one the host lacks: a test
// must skip for a missing tool, not run busybox's version of it.
func (l *Lab) addTools(ctx context.Context, r *root) error {
	var names []string
	for i, list := range [][]string{requiredTools, optionalTools} {
		for _, tool := range list {
			names = append(names, tool)
			p, err := exec.LookPath(tool)
			if err != nil {
				if i == 0 {
					return fmt.Errorf("vm: %s is not installed", tool)
				}
				l.cfg.Logf("vm: %s is not installed on the host; the guest's tests that use it will skip", tool)
				continue
			}
			if err := r.addBinary(ctx, p); err != nil {
				return err
			}
		}
	}
	if err := r.writeFile("/zlvm/tools", strings.Join(names, "\n")+"\n", 0o644); err != nil {
		return err
	}
	xt, _ := filepath.Glob("/usr/lib/*-linux-gnu/xtables")
	for _, dir := range xt {
		exts, _ := filepath.Glob(filepath.Join(dir, "*.so"))
		for _, so := range exts {
			if err := r.addBinary(ctx, so); err != nil {
				return err
			}
		}
	}
	return nil
}
