#!/usr/bin/env python3
"""Where a whole-machine profile of a WireGuard pair goes, by kind of work.

Reads `perf script -F comm,ip,sym` of a `perf record -a -g` profile (what
`PROFILE=1 bench/wg-variants.sh` writes) and prints the share of all samples
in each kind: the data plane processes' own code (crypto, memmove, the Go
runtime, the rest of wireguard-go), the kernel work done in their context by
the system call it serves (TUN read and write, UDP send and receive, with the
packet's delivery to the other side that runs inside the same call),
interrupts, iperf3 and idle. Then the data plane's own leaf functions, for
the pieces too small to name in the kinds.

  perf script -i /tmp/wg-variants-P1.perf -F comm,ip,sym > /tmp/p1.stacks
  bench/perf-breakdown.py /tmp/p1.stacks [COMM]    # COMM: wg-fork (default)
"""
import collections
import sys

USER_PREFIXES = ("golang", "sync", "aeshash", "mem", "time", "net", "os", "syscall",
                 "__vdso", "internal/", "runtime")
SCHED = ("schedule", "findRunnable", "netpoll", "park_m", "goready", "mcall",
         "futex", "stopm", "startm", "wakep", "gopark")
SYSCALLS = [  # first match wins
    ("kernel: TUN read", ("tun_chr_read_iter",)),
    ("kernel: TUN write (+ delivery to the receiver's TCP)", ("tun_chr_write_iter", "tun_get_user")),
    ("kernel: UDP send (+ veth and the peer's UDP queue)", ("udp_sendmsg", "__sys_sendmsg", "sendmmsg")),
    ("kernel: UDP receive", ("udp_recvmsg", "recvmmsg")),
    ("kernel: futex", ("futex",)),
    ("kernel: epoll", ("epoll",)),
    ("kernel: sleep, yield", ("nanosleep", "sched_yield")),
    ("kernel: interrupts, IPIs", ("asm_sysvec", "irq")),
    ("kernel: scheduling", ("schedule",)),
]


def kind(frames):
    leaf = frames[0]
    if leaf.startswith(USER_PREFIXES):
        if "/aeadbatch." in leaf or "chacha20" in leaf or "poly1305" in leaf:
            return "user: crypto"
        if leaf.startswith("runtime.memmove"):
            return "user: memmove"
        if leaf.startswith(("runtime", "internal/runtime")):
            near = " ".join(frames[:8])
            return "user: Go scheduler" if any(s in near for s in SCHED) else "user: Go runtime, other"
        return "user: wireguard-go and the rest"
    stack = " ".join(frames)
    for name, marks in SYSCALLS:
        if any(m in stack for m in marks):
            return name
    return "kernel: other"


def main():
    path = sys.argv[1]
    comm = sys.argv[2] if len(sys.argv) > 2 else "wg-fork"
    kinds, leaves, total = collections.Counter(), collections.Counter(), 0
    for sample in open(path).read().split("\n\n"):
        lines = [l for l in sample.split("\n") if l.strip()]
        if len(lines) < 2:
            continue
        total += 1
        frames = [l.split(None, 1)[1] if len(l.split(None, 1)) > 1 else "" for l in lines[1:]]
        who = lines[0].strip()
        if who != comm:
            kinds["other process: " + who] += 1
            continue
        k = kind(frames)
        kinds[k] += 1
        if k.startswith("user"):
            leaves[frames[0].replace("golang.zx2c4.com/wireguard/", "")] += 1
    print(f"{total} samples; share of all of them")
    for k, n in kinds.most_common():
        if 100 * n / total >= 0.1:
            print(f"{100 * n / total:6.2f} %  {k}")
    print(f"\n{comm}'s own code, by leaf function")
    for k, n in leaves.most_common(30):
        print(f"{100 * n / total:6.2f} %  {k}")


if __name__ == "__main__":
    main()
