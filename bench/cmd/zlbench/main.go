//go:build linux

// Command zlbench runs the side-by-side benchmarks of issue 9: each
// comparison measures zlayer-overlayd and the tool people use today in the
// same run, interleaved round by round, and prints medians, min/max and
// the ratio. Everything it creates (namespaces, links, processes, files)
// carries the prefix zltb and is removed on every exit path.
//
//	zlbench [flags] ipc|attach|dns|throughput|scale|cni|all
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/bench/internal/benchlib"
)

var (
	rounds   = flag.Int("rounds", 5, "interleaved rounds per comparison (at least 5)")
	toolsDir = flag.String("tools", "/var/tmp/zlayer-bench/bin", "where bench/install.sh put the peers (CNI plugins, cnitool, coredns, wireguard-go)")
	quick    = flag.Bool("quick", false, "shorter measurements (for a smoke run; numbers are noisier)")
	tcpCC    = flag.String("tcp-cc", "", "throughput: the TCP congestion control iperf3 uses for every contender (iperf3 -C; default: the namespace's, net.ipv4.tcp_congestion_control)")
	profile  = flag.String("cpuprofile", "", "ipc, dns, scale, throughput: write CPU profiles of zlayer-overlayd under load (first round) to FILE-<comparison>.pprof (uses --pprof-listen; throughput runs the data path inside the daemon, --dataplane daemon, so the profile holds it)")
)

type comparison struct {
	name string
	run  func() error
}

func main() {
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: zlbench [flags] ipc|attach|dns|throughput|scale|cni|all\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "zlbench: needs root (network namespaces, devices); run `sudo make bench`")
		os.Exit(2)
	}
	if *rounds < 5 {
		fmt.Fprintln(os.Stderr, "zlbench: -rounds must be at least 5")
		os.Exit(2)
	}
	benchlib.HandleSignals()
	defer benchlib.Cleanup()

	all := []comparison{
		{"ipc", benchIPC},
		{"attach", benchAttach},
		{"dns", benchDNS},
		{"throughput", benchThroughput},
		{"scale", benchScale},
		{"cni", benchCNI},
	}
	what := flag.Arg(0)
	host, _ := os.Hostname()
	fmt.Printf("zlbench %s on %s: %d CPUs, %s, %s, at %s, names %s*\n", what, host, runtime.NumCPU(), kernel(), runtime.Version(),
		time.Now().UTC().Format(time.RFC3339), benchlib.Prefix+benchlib.ID)
	failed := false
	for _, c := range all {
		if what != "all" && what != c.name {
			continue
		}
		if err := c.run(); err != nil {
			fmt.Fprintf(os.Stderr, "zlbench %s: %v\n", c.name, err)
			failed = true
		}
		if what != "all" {
			break
		}
	}
	if what != "all" && !strings.Contains("ipc attach dns throughput scale cni", what) {
		flag.Usage()
		benchlib.Cleanup()
		os.Exit(2)
	}
	if failed {
		benchlib.Cleanup()
		os.Exit(1)
	}
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "linux"
	}
	return "Linux " + strings.TrimSpace(string(b))
}

// tool is the path of a peer installed by bench/install.sh.
func tool(name string) (string, error) {
	p := filepath.Join(*toolsDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s is not installed in %s; run bench/install.sh (make bench does)", name, *toolsDir)
	}
	return p, nil
}

// profilePath is where the CPU profile of a comparison goes.
func profilePath(comparison string) string {
	return strings.TrimSuffix(*profile, ".pprof") + "-" + comparison + ".pprof"
}

// measure picks a measurement length: normal or -quick.
func measure(normal, short time.Duration) time.Duration {
	if *quick {
		return short
	}
	return normal
}
