package firewall

import (
	"fmt"
	"slices"

)

// canonical renders a table's content as lines that are equal exactly when
// two tables filter the same way: chains and sets sorted by name, rules in
// chain order, set elements sorted. Counter values and the batch-local set
// IDs are left out; everything else the kernel reports back is kept, so a
// rule edited by hand (not just one deleted) counts as drift.
func canonical(rs ruleset) []string {
	if !rs.present {
		return nil
	}
	lines := []string{fmt.Sprintf("table %s flags=%d", rs.table.Name, rs.table.Flags)}
	for _, s := range sortedSets(rs.sets) {
		lines = append(lines, fmt.Sprintf("set %s key=%s/%d interval=%t constant=%t map=%t timeout=%t dynamic=%t concat=%t",
			s.Name, s.KeyType.Name, s.KeyType.Bytes, s.Interval, s.Constant, s.IsMap, s.HasTimeout, s.Dynamic, s.Concatenation))
		var elems []string
		for _, e := range rs.elems[s.Name] {
			elems = append(elems, fmt.Sprintf("  elem %x end=%t val=%x", e.Key, e.IntervalEnd, e.Val))
		}
		slices.Sort(elems)
		lines = append(lines, elems...)
	}
	for _, ch := range sortedChains(rs.chains) {
		line := fmt.Sprintf("chain %s type=%q", ch.Name, ch.Type)
		if ch.Hooknum != nil {
			line += fmt.Sprintf(" hook=%d", *ch.Hooknum)
		}
		if ch.Priority != nil {
			line += fmt.Sprintf(" prio=%d", *ch.Priority)
		}
		if ch.Policy != nil {
			line += fmt.Sprintf(" policy=%d", *ch.Policy)
		}
		lines = append(lines, line)
		for _, r := range rs.images[ch.Name] {
			line := fmt.Sprintf("  rule userdata=%x", r.userdata)
			for _, e := range r.exprs {
				line += " " + e.canonical()
			}
			lines = append(lines, line)
		}
	}
	return lines
}
