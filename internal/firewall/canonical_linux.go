package firewall

import (
	"fmt"
	"slices"
	"strings"
)

// canonical renders a table's content as lines that are equal exactly when
// two tables filter the same way: chains and sets sorted by name, rules in
// chain order, set elements sorted. Counter values and batch-local set IDs
// are left out (see exprImage.canonical); everything else the kernel
// reports back is kept, so a rule edited by hand, not just one deleted,
// counts as drift.
func canonical(rs ruleset) []string {
	if !rs.present {
		return nil
	}
	lines := []string{fmt.Sprintf("table %s flags=%d", rs.table.Name, rs.table.Flags)}
	sets := slices.Clone(rs.sets)
	slices.SortFunc(sets, func(a, b setImage) int { return strings.Compare(a.name, b.name) })
	for _, s := range sets {
		lines = append(lines, fmt.Sprintf("set %s flags=%#x key=%d/%d data=%d/%d", s.name, s.flags, s.keyType, s.keyLen, s.dataType, s.dataLen))
		var elems []string
		for _, e := range s.elems {
			elems = append(elems, fmt.Sprintf("  elem %x flags=%#x data=%x", e.key, e.flags, e.data))
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
		for _, r := range rs.rules[ch.Name] {
			line := fmt.Sprintf("  rule userdata=%x", r.userdata)
			for _, e := range r.exprs {
				line += " " + e.canonical()
			}
			lines = append(lines, line)
		}
	}
	return lines
}
