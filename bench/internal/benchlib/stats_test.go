//go:build linux

package benchlib

import (
	"bytes"
	"strings"
	"testing"
)

func TestPercentileInterpolates(t *testing.T) {
	s := []float64{10, 20, 30, 40, 50}
	for _, c := range []struct{ p, want float64 }{{0, 10}, {50, 30}, {100, 50}, {25, 20}, {90, 46}} {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Summarize([]float64{3, 1, 2, 4}); got.Median != 2.5 || got.Min != 1 || got.Max != 4 || got.N != 4 {
		t.Errorf("summary %+v", got)
	}
}

// Rounds must alternate between contenders (ours, peer, ours, peer …)
// so load drift hits both.
func TestInterleaveAlternatesAndComputesRatios(t *testing.T) {
	var order []string
	mk := func(name string, v float64) Contender {
		return Contender{Name: name, Run: func(int) (map[string]float64, error) {
			order = append(order, name)
			return map[string]float64{"rate": v}, nil
		}}
	}
	res, err := Interleave("t", 3, []Metric{{Name: "rate", Unit: "x", Better: "higher", Goal: 0.7, GoalPeer: "peer"}},
		mk("ours", 80), mk("peer", 100), mk("other", 40))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(order, ","); got != "ours,peer,other,ours,peer,other,ours,peer,other" {
		t.Fatalf("order %s", got)
	}
	if r := res.Ratio("rate", "ours", "peer"); r != 0.8 {
		t.Fatalf("ratio %v", r)
	}
	var out bytes.Buffer
	res.Print(&out)
	if !strings.Contains(out.String(), "ours/peer = 0.800") || !strings.Contains(out.String(), "goal ≥ 0.70: MET") {
		t.Fatalf("output lacks the ratio or verdict:\n%s", out.String())
	}
	if strings.Contains(out.String(), "ours/other = 2.000 (higher is better)  goal") {
		t.Fatalf("goal applied to a contender it is not against:\n%s", out.String())
	}
}

func TestNamesFitAnInterface(t *testing.T) {
	if n := Name("a-very-long-suffix"); len(n) > 15 || !strings.HasPrefix(n, Prefix+ID) {
		t.Fatalf("Name = %q", n)
	}
}

// A goal against the best of several tunings of a peer compares with
// whichever did best.
func TestGoalAgainstTheBestOf(t *testing.T) {
	mk := func(name string, v float64) Contender {
		return Contender{Name: name, Run: func(int) (map[string]float64, error) { return map[string]float64{"rate": v}, nil }}
	}
	res, err := Interleave("t", 3, []Metric{{Name: "rate", Unit: "x", Better: "higher", Goal: 1.2, GoalBestOf: []string{"peer", "peer tuned"}}},
		mk("ours", 120), mk("peer", 90), mk("peer tuned", 110))
	if err != nil {
		t.Fatal(err)
	}
	if best, _ := res.Best(res.Metrics[0], []string{"peer", "peer tuned"}); best != "peer tuned" {
		t.Fatalf("best %q", best)
	}
	var out bytes.Buffer
	res.Print(&out)
	if !strings.Contains(out.String(), "ours/best of (peer, peer tuned) = 1.091, the best being peer tuned  goal ≥ 1.20: NOT MET") {
		t.Fatalf("printed:\n%s", out.String())
	}
}
