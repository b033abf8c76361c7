//go:build linux

package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Dist is a set of Debian suites a kernel is taken from. The kernel is
// whatever the suites' linux-image-cloud-amd64 metapackage depends on
// today, so a lab always boots the stock kernel users get, never a pinned
// ABI number that the archive has already replaced.
type Dist struct {
	// Name labels the kernel in test names and the cache.
	Name string
	// Sources are sources.list lines, written to a private file: the
	// host's /etc/apt is never read for sources nor modified.
	Sources []string
	// CPU is QEMU's -cpu for this kernel; empty means "max", every
	// feature the emulator has.
	CPU string
}

const (
	debianMirror  = "http://deb.debian.org/debian"
	debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
	metapackage   = "linux-image-cloud-amd64"
)

func debSource(uri, suite string) string {
	return fmt.Sprintf("deb [signed-by=%s] %s %s main", debianKeyring, uri, suite)
}

// The kernels the lab knows. The cloud flavour is Debian's kernel for VMs:
// it has the virtual hardware QEMU offers built in and the networking
// (wireguard, veth, bridge, nf_tables, tun) as modules, like every stock
// distribution kernel.
var (
	// Bookworm is Debian 12's kernel (6.1), with its security updates.
	Bookworm = Dist{Name: "bookworm", Sources: []string{
		debSource(debianMirror, "bookworm"),
		debSource(debianMirror, "bookworm-updates"),
		debSource("http://deb.debian.org/debian-security", "bookworm-security"),
	}}
	// BookwormBackports is the newest kernel Debian 12 users can install.
	//
	// Under Debian 12's QEMU 7.2 with -cpu max, its 6.12 kernel crashes
	// within a minute, at boot or in the first suite: EFLAGS with reserved
	// bits and TF set right after SLUB's `cmpxchg16b %gs:(%rsi)` fast
	// path, then a WARN in exc_debug_kernel, NULL dereferences and double
	// faults, with single-threaded TCG and mitigations=off too. Without
	// CX16 in the emulated CPU, SLUB takes its locked path instead and the
	// kernel runs clean; 6.1 runs clean with it.
	BookwormBackports = Dist{Name: "bookworm-backports", CPU: "max,-cx16", Sources: []string{
		debSource(debianMirror, "bookworm-backports"),
	}}
)

// Kernel is a kernel package unpacked in the cache.
type Kernel struct {
	Dist    string
	CPU     string // QEMU's -cpu, from the Dist
	Package string // e.g. linux-image-6.1.0-57-cloud-amd64
	Version string // the package version, e.g. 6.1.192-3
	Release string // uname -r, e.g. 6.1.0-57-cloud-amd64
	// Root is the unpacked package: boot/vmlinuz-<Release>,
	// lib/modules/<Release>/.
	Root string
}

// Vmlinuz is the kernel image.
func (k *Kernel) Vmlinuz() string { return filepath.Join(k.Root, "boot", "vmlinuz-"+k.Release) }

// ModulesDir is lib/modules/<Release> of the package.
func (k *Kernel) ModulesDir() string { return filepath.Join(k.Root, "lib", "modules", k.Release) }

func (k *Kernel) String() string {
	return fmt.Sprintf("%s %s (%s, Debian %s, QEMU -cpu %s)", k.Package, k.Version, k.Release, k.Dist, k.CPU)
}

// listsMaxAge is how old downloaded package lists may be before a run
// refreshes them. Between refreshes a run needs no network at all.
const listsMaxAge = 24 * time.Hour

// ResolveKernel returns dist's current cloud kernel, downloading and
// unpacking it into cacheDir the first time. Package lists are refreshed
// when older than a day, and at once if the package they name is gone
// from the mirror (a newer ABI was published). Without network, the last
// kernel resolved for dist is used, and logf says so.
func ResolveKernel(ctx context.Context, cacheDir string, dist Dist, logf func(string, ...any)) (*Kernel, error) {
	a, err := newAptEnv(cacheDir, dist)
	if err != nil {
		return nil, err
	}
	k, err := resolveAndFetch(ctx, a, cacheDir, dist, false)
	if err != nil && !a.refreshedNow {
		logf("vm: %v; refreshing the package lists of %s and retrying", err, dist.Name)
		k, err = resolveAndFetch(ctx, a, cacheDir, dist, true)
	}
	if err != nil {
		if cached, cerr := lastResolved(cacheDir, dist); cerr == nil {
			logf("vm: cannot resolve the %s kernel through apt (%v); using the one cached last time, %s", dist.Name, err, cached)
			return cached, nil
		}
		return nil, err
	}
	if err := rememberResolved(cacheDir, k); err != nil {
		return nil, err
	}
	return k, nil
}

func resolveAndFetch(ctx context.Context, a *aptEnv, cacheDir string, dist Dist, refresh bool) (*Kernel, error) {
	if err := a.update(ctx, refresh); err != nil {
		return nil, err
	}
	pkg, err := a.kernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	version, err := a.candidateVersion(ctx, pkg)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(cacheDir, "kernels", pkg+"_"+version)
	if _, err := os.Stat(filepath.Join(root, ".complete")); err != nil {
		if err := a.fetch(ctx, pkg, version, root); err != nil {
			return nil, err
		}
	}
	return loadKernel(dist, pkg, version, root)
}

// loadKernel reads what the unpacked package holds.
func loadKernel(dist Dist, pkg, version, root string) (*Kernel, error) {
	images, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return nil, fmt.Errorf("%s: want exactly one boot/vmlinuz-* in the package, found %d", pkg, len(images))
	}
	cpu := dist.CPU
	if cpu == "" {
		cpu = "max"
	}
	k := &Kernel{Dist: dist.Name, CPU: cpu, Package: pkg, Version: version, Root: root,
		Release: strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")}
	if _, err := os.Stat(k.ModulesDir()); err != nil {
		return nil, fmt.Errorf("%s has no modules for %s: %w", pkg, k.Release, err)
	}
	return k, nil
}

// rememberResolved records the kernel last resolved for a dist, the
// fallback for a run without network.
func rememberResolved(cacheDir string, k *Kernel) error {
	line := k.Package + " " + k.Version + "\n"
	return writeFileAtomic(filepath.Join(cacheDir, k.Dist+".resolved"), []byte(line), 0o644)
}

func lastResolved(cacheDir string, dist Dist) (*Kernel, error) {
	b, err := os.ReadFile(filepath.Join(cacheDir, dist.Name+".resolved"))
	if err != nil {
		return nil, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return nil, fmt.Errorf("malformed %s.resolved", dist.Name)
	}
	return loadKernel(dist, f[0], f[1], filepath.Join(cacheDir, "kernels", f[0]+"_"+f[1]))
}

// aptEnv runs apt with a private configuration: its own sources, lists
// and package cache under the lab's cache directory.
type aptEnv struct {
	dir          string
	refreshedNow bool
}

func newAptEnv(cacheDir string, dist Dist) (*aptEnv, error) {
	a := &aptEnv{dir: filepath.Join(cacheDir, "apt", dist.Name)}
	for _, d := range []string{"lists/partial", "archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	src := strings.Join(dist.Sources, "\n") + "\n"
	if err := writeFileAtomic(filepath.Join(a.dir, "sources.list"), []byte(src), 0o644); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *aptEnv) options() []string {
	return []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=-",
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::Cache=" + a.dir,
		"-o", "Dir::Cache::Archives=" + filepath.Join(a.dir, "archives"),
		// The lab runs as root; apt's _apt sandbox user could not write
		// into a cache root made.
		"-o", "APT::Sandbox::User=root",
		"-q",
	}
}

func (a *aptEnv) run(ctx context.Context, dir, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, tool, append(a.options(), args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// update refreshes the lists when forced, missing or older than
// listsMaxAge.
func (a *aptEnv) update(ctx context.Context, force bool) error {
	stamp := filepath.Join(a.dir, "lists.updated")
	if st, err := os.Stat(stamp); err == nil && !force && time.Since(st.ModTime()) < listsMaxAge {
		return nil
	}
	if _, err := a.run(ctx, a.dir, "apt-get", "update"); err != nil {
		return err
	}
	a.refreshedNow = true
	return os.WriteFile(stamp, nil, 0o644)
}

// kernelPackage is the kernel image package the metapackage depends on.
func (a *aptEnv) kernelPackage(ctx context.Context) (string, error) {
	out, err := a.run(ctx, a.dir, "apt-cache", "depends", metapackage)
	if err != nil {
		return "", err
	}
	return parseKernelDepends(out)
}

// parseKernelDepends picks the linux-image-* dependency out of
// `apt-cache depends linux-image-cloud-amd64`.
func parseKernelDepends(out string) (string, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("apt-cache depends %s names no linux-image-* package:\n%s", metapackage, out)
}

func (a *aptEnv) candidateVersion(ctx context.Context, pkg string) (string, error) {
	out, err := a.run(ctx, a.dir, "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", err
	}
	return parseVersion(out, pkg)
}

func parseVersion(show, pkg string) (string, error) {
	sc := bufio.NewScanner(strings.NewReader(show))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("apt-cache show %s has no Version field", pkg)
}

// fetch downloads pkg=version and unpacks it into root, which appears
// complete or not at all.
func (a *aptEnv) fetch(ctx context.Context, pkg, version, root string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(a.dir), "fetch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if _, err := a.run(ctx, tmp, "apt-get", "download", pkg+"="+version); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	unpacked := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], unpacked).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
	}
	if err := os.WriteFile(filepath.Join(unpacked, ".complete"), nil, 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return err
	}
	os.RemoveAll(root) // an incomplete earlier attempt
	if err := os.Rename(unpacked, root); err != nil {
		return errors.Join(fmt.Errorf("move the unpacked %s into the cache", pkg), err)
	}
	return nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
