// Package hugepages keeps a process's memory out of transparent huge pages.
//
// The Go runtime gives a burst's free heap back to the kernel (the data
// plane forces it after UAPI bursts; the scavenger does it slowly anyway),
// but on a kernel whose THP mode is "always" (Debian's kernels are built
// so) khugepaged collapses ranges that are partly free into huge pages
// again, making the returned memory resident once more. On our host set to
// "always", a data plane holding 4,000 peers stayed near 160 MiB after a
// burst of reads, against 109 MiB with "madvise", and once kept all of its
// peak. Since Go 1.21.1 the runtime no longer marks its heap either
// way, so on "madvise" kernels it gets no huge pages already: refusing them
// makes "always" kernels behave like those, which is also where this
// project's throughput was measured. The runtime's own switch for this
// (GODEBUG=disablethp=1) is documented as due for removal; the prctl is
// the kernel's interface and stays.
package hugepages

// Refuse keeps transparent huge pages away from the calling process and
// the processes it starts. It is best effort: an error means the kernel
// refused (before Linux 3.15, or a seccomp filter) and memory behaves as
// the system's THP mode says.
func Refuse() error { return refuse() }

// Refused reports whether process pid has refused transparent huge pages.
// known is false where the kernel does not say (before Linux 5.0, and on
// other systems).
func Refused(pid int) (refused, known bool, err error) { return readRefused(pid) }
