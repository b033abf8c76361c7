package wg

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// vmRSS is a process's resident set in bytes, from /proc.
func vmRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// A data plane given thousands of peers and read again and again, as the
// daemon's monitor reads it every health interval, gives the garbage of
// that burst back to the kernel once the requests stop: without it the Go
// runtime keeps up to twice the live heap resident.
func TestDataplaneReturnsItsHeapAfterABurst(t *testing.T) {
	requireRoot(t)
	_, _, dev, pid := openDataplaneProcess(t, "m")
	d := newProcessDevice(dev, slog.New(slog.DiscardHandler))
	const peers = 4000
	var batch []wgtypes.PeerConfig
	for i := range peers {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, wgtypes.PeerConfig{
			PublicKey:  k.PublicKey(),
			Endpoint:   &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + i},
			AllowedIPs: []net.IPNet{{IP: net.IPv4(10, 240, byte(i/250), byte(i%250+1)), Mask: net.CIDRMask(32, 32)}},
		})
		if len(batch) == 100 {
			if err := d.Configure(wgtypes.Config{Peers: batch}); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	var peak uint64
	for range 60 {
		snap, err := d.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.Peers) != peers {
			t.Fatalf("the data plane holds %d peers, want %d", len(snap.Peers), peers)
		}
		peak = max(peak, vmRSS(t, pid))
	}
	// The data plane checks every 2 s; the first check with no request
	// since the one before trims. 20 s is only how long a failure takes.
	const drop = 16 << 20
	deadline := time.Now().Add(20 * time.Second)
	for {
		rss := vmRSS(t, pid)
		if rss+drop <= peak {
			t.Logf("resident %d MiB at the burst's peak, %d MiB after it", peak>>20, rss>>20)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the data plane still holds %d MiB after the burst, against %d MiB at its peak: its free heap was not returned", rss>>20, peak>>20)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
