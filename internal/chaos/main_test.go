//go:build linux

package chaos

import (
	"flag"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/testbin"
)

var (
	seedFlag  = flag.Uint64("chaos.seed", 0, "seed of the randomized suites (0 picks one and logs it)")
	opsFlag   = flag.Int("chaos.ops", 150, "operations of the crash-consistency workload")
	killsFlag = flag.Int("chaos.kills", 5, "SIGKILLs of a node's daemon during the crash-consistency workload")
	reqsFlag  = flag.Int("chaos.requests", 1000, "requests per client of the load suites (64 clients)")
)

func TestMain(m *testing.M) { testbin.Main(m) }

// newRand returns the generator of a randomized test and logs its seed, so
// a failure can be replayed exactly with -chaos.seed.
func newRand(t testing.TB) (*rand.Rand, uint64) {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -chaos.seed=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), seed
}
