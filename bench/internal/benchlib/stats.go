//go:build linux

package benchlib

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Summary is the median, minimum and maximum of a set of samples.
type Summary struct {
	N                int
	Median, Min, Max float64
}

// Summarize sorts a copy of xs.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return Summary{N: len(s), Median: Percentile(s, 50), Min: s[0], Max: s[len(s)-1]}
}

// Percentile of sorted samples (nearest rank, interpolated between the two
// closest samples).
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	r := p / 100 * float64(len(sorted)-1)
	lo := int(r)
	if lo >= len(sorted)-1 {
		return sorted[len(sorted)-1]
	}
	f := r - float64(lo)
	return sorted[lo]*(1-f) + sorted[lo+1]*f
}

// DurationPercentile is Percentile over durations, in microseconds.
func DurationPercentile(sorted []time.Duration, p float64) float64 {
	fs := make([]float64, len(sorted))
	for i, d := range sorted {
		fs[i] = float64(d) / float64(time.Microsecond)
	}
	return Percentile(fs, p)
}

// Metric is one measured quantity of an A/B comparison.
type Metric struct {
	Name   string
	Unit   string
	Better string // "higher" or "lower"
	// Goal is the ratio ours/peer to reach: at least Goal when Better is
	// "higher", at most Goal when "lower"; 0 means none.
	Goal float64
	// GoalPeer names the contender the goal is against (default: every
	// other contender).
	GoalPeer string
	// GoalBestOf, when set, puts the goal against the best median of these
	// contenders instead: the same peer tuned in several ways a user might
	// tune it, compared at its best.
	GoalBestOf []string
}

// Contender is one side of a comparison: Run measures one round and returns
// a value per metric (by name).
type Contender struct {
	Name string
	Run  func(round int) (map[string]float64, error)
}

// Result holds every round's samples: Samples[contender][metric].
type Result struct {
	Title   string
	Metrics []Metric
	Names   []string
	Samples map[string]map[string][]float64
}

// Interleave runs rounds of ours, peer, ours, peer … (contenders in the
// order given, alternating every round), so drift in the machine's load
// hits both sides alike.
func Interleave(title string, rounds int, metrics []Metric, cs ...Contender) (*Result, error) {
	res := &Result{Title: title, Metrics: metrics, Samples: map[string]map[string][]float64{}}
	for _, c := range cs {
		res.Names = append(res.Names, c.Name)
		res.Samples[c.Name] = map[string][]float64{}
	}
	for r := range rounds {
		for _, c := range cs {
			vals, err := c.Run(r)
			if err != nil {
				return res, fmt.Errorf("%s round %d: %w", c.Name, r+1, err)
			}
			for k, v := range vals {
				res.Samples[c.Name][k] = append(res.Samples[c.Name][k], v)
			}
		}
	}
	return res, nil
}

// Ratio is median(ours)/median(peer) for a metric.
func (r *Result) Ratio(metric, ours, peer string) float64 {
	a := Summarize(r.Samples[ours][metric]).Median
	b := Summarize(r.Samples[peer][metric]).Median
	if b == 0 {
		return 0
	}
	return a / b
}

// Print writes a table: one line per contender and metric with median,
// min and max, then the ratio of the first contender (ours) to each other.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "\n== %s  (load average %s)\n", r.Title, LoadAverage())
	fmt.Fprintf(w, "%-28s %-22s %12s %12s %12s %4s\n", "metric", "contender", "median", "min", "max", "n")
	for _, m := range r.Metrics {
		for _, n := range r.Names {
			xs := r.Samples[n][m.Name]
			if len(xs) == 0 {
				continue
			}
			s := Summarize(xs)
			fmt.Fprintf(w, "%-28s %-22s %12s %12s %12s %4d\n", m.Name+" ("+m.Unit+")", n, num(s.Median), num(s.Min), num(s.Max), s.N)
		}
	}
	if len(r.Names) < 2 {
		return
	}
	ours := r.Names[0]
	for _, m := range r.Metrics {
		for _, peer := range r.Names[1:] {
			if len(r.Samples[peer][m.Name]) == 0 || len(r.Samples[ours][m.Name]) == 0 {
				continue
			}
			ratio := r.Ratio(m.Name, ours, peer)
			verdict := ""
			if m.Goal > 0 && len(m.GoalBestOf) == 0 && (m.GoalPeer == "" || m.GoalPeer == peer) {
				met := ratio >= m.Goal
				cmp := "≥"
				if m.Better == "lower" {
					met = ratio <= m.Goal
					cmp = "≤"
				}
				verdict = fmt.Sprintf("  goal %s %.2f: %s", cmp, m.Goal, map[bool]string{true: "MET", false: "NOT MET"}[met])
			}
			fmt.Fprintf(w, "ratio %-22s %s/%s = %.3f (%s is better)%s\n", m.Name, ours, peer, ratio, m.Better, verdict)
		}
		if best, ok := r.Best(m, m.GoalBestOf); ok && m.Goal > 0 {
			ratio := r.Ratio(m.Name, ours, best)
			met, cmp := ratio >= m.Goal, "≥"
			if m.Better == "lower" {
				met, cmp = ratio <= m.Goal, "≤"
			}
			fmt.Fprintf(w, "ratio %-22s %s/best of (%s) = %.3f, the best being %s  goal %s %.2f: %s\n", m.Name, ours,
				strings.Join(m.GoalBestOf, ", "), ratio, best, cmp, m.Goal, map[bool]string{true: "MET", false: "NOT MET"}[met])
		}
	}
}

// Best is the contender among names with the best median of metric m.
func (r *Result) Best(m Metric, names []string) (string, bool) {
	best, found := "", false
	for _, n := range names {
		xs := r.Samples[n][m.Name]
		if len(xs) == 0 {
			continue
		}
		v := Summarize(xs).Median
		if !found {
			best, found = n, true
			continue
		}
		b := Summarize(r.Samples[best][m.Name]).Median
		if (m.Better == "lower" && v < b) || (m.Better != "lower" && v > b) {
			best = n
		}
	}
	return best, found
}

func num(f float64) string {
	switch {
	case f >= 100:
		return strings.TrimSuffix(fmt.Sprintf("%.0f", f), ".")
	case f >= 1:
		return fmt.Sprintf("%.2f", f)
	default:
		return fmt.Sprintf("%.4f", f)
	}
}
