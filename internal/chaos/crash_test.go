//go:build linux

package chaos

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestCrashConsistency runs a seeded random workload (service setups and
// teardowns, container attaches, detaches and deaths, peers, allowed IPs,
// DNS records, address allocations) against a two-node lab and SIGKILLs a
// node's daemon at random points: between two operations, or while one is
// in flight. After every restart, and at the end after killing both
// daemons, the invariants of check and reachable must hold: nothing
// acknowledged is lost, nothing removed comes back, no address is held
// twice, no link, route, nft element, WireGuard peer or DNS record exists
// that the store does not want, and every live container still reaches its
// gateway and the other node.
//
// make test runs -chaos.ops=150 -chaos.kills=5; make soak runs 1,000
// operations and 20 kills. -chaos.seed replays a run.
func TestCrashConsistency(t *testing.T) {
	w := newWorld(t)
	ops, kills := *opsFlag, *killsFlag
	if testing.Short() {
		ops, kills = min(ops, 60), min(kills, 2)
	}
	killAt := map[int]bool{}
	for len(killAt) < min(kills, ops) {
		killAt[1+w.rng.IntN(ops)] = true
	}
	var schedule []int
	for i := range killAt {
		schedule = append(schedule, i)
	}
	sort.Ints(schedule)
	t.Logf("%d operations, SIGKILL at %v", ops, schedule)
	w.checkAll("before the workload")

	var requests, deaths, midKills, betweenKills int
	for i := 1; i <= ops; i++ {
		o := w.nextOp()
		if o.req == nil {
			deaths++
			w.logf("node %s: %s", o.nd.name, o.desc)
		}
		if !killAt[i] {
			if o.req != nil {
				requests++
				w.run(o)
			}
			continue
		}
		var victim *node
		if o.req != nil && !o.noMidKill && w.rng.IntN(3) > 0 {
			requests++
			midKills++
			victim = o.nd
			w.runKilled(o, time.Duration(w.rng.IntN(60))*time.Millisecond)
		} else {
			if o.req != nil {
				requests++
				w.run(o)
			}
			betweenKills++
			victim = pick(w.rng, w.nodes)
			w.killBetween(victim)
		}
		victim.afterRestart()
		if err := victim.resync(); err != nil {
			w.fatalf("after restarting node %s: %v", victim.name, err)
		}
		w.checkAll(fmt.Sprintf("after kill %d (operation %d, node %s)", midKills+betweenKills, i, victim.name))
	}
	// The end: both daemons crash at once and come back.
	for _, nd := range w.nodes {
		w.killBetween(nd)
		nd.afterRestart()
	}
	w.checkAll("after killing both daemons at the end")
	for _, nd := range w.nodes {
		if err := cleanLog(nd.n.LogPath()); err != nil {
			t.Errorf("node %s: %v", nd.name, err)
		}
	}
	t.Logf("%d operations (%d requests, %d container deaths); %d SIGKILLs mid-request, %d between requests, 2 at the end",
		ops, requests, deaths, midKills, betweenKills)
	t.Logf("by kind: %v", w.counts)
}

// cleanLog fails on what a daemon must never log, even one that was
// SIGKILLed before it could exit with an error: a data race (the lab runs
// race-enabled binaries under -race), a panic, a fatal Go runtime error.
func cleanLog(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:", "level=ERROR"} {
		if i := strings.Index(string(b), bad); i >= 0 {
			return fmt.Errorf("the daemon log has %q:\n%s", bad, b[max(0, i-2000):min(len(b), i+4000)])
		}
	}
	return nil
}
