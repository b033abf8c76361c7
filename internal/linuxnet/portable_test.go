package linuxnet

import (
	"net/netip"
	"slices"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestPlanAddrs(t *testing.T) {
	for _, c := range []struct {
		name                string
		have, want          []netip.Prefix
		wantAdd, wantDelete []netip.Prefix
	}{
		{"fresh device", nil, prefixes("10.200.0.1/16"), prefixes("10.200.0.1/16"), nil},
		{"already right", prefixes("10.200.0.1/16", "fe80::1/64"), prefixes("10.200.0.1/16"), nil, nil},
		{"new node IP replaces the old", prefixes("10.200.0.1/16"), prefixes("10.200.0.17/16"), prefixes("10.200.0.17/16"), prefixes("10.200.0.1/16")},
		{"prefix length change is a new address", prefixes("10.200.0.1/24"), prefixes("10.200.0.1/16"), prefixes("10.200.0.1/16"), prefixes("10.200.0.1/24")},
		{"other family untouched", prefixes("10.200.0.1/16", "fd00::1/64"), prefixes("10.200.0.1/16"), nil, nil},
		{"link-local kept", prefixes("fe80::1/64", "fd00::9/64"), prefixes("fd00::1/64"), prefixes("fd00::1/64"), prefixes("fd00::9/64")},
		{"empty want changes nothing", prefixes("10.200.0.1/16"), nil, nil, nil},
		{"both families", prefixes("10.0.0.1/8", "fd00::1/64"), prefixes("10.0.0.2/8", "fd00::1/64"), prefixes("10.0.0.2/8"), prefixes("10.0.0.1/8")},
		{"fresh adapter (only its link-local)", prefixes("fe80::5:1/64"), prefixes("10.200.0.1/16"), prefixes("10.200.0.1/16"), nil},
		{"already right, no link-local", prefixes("10.200.0.1/16"), prefixes("10.200.0.1/16"), nil, nil},
		{"other family untouched, listed first", prefixes("fd00::1/64", "10.200.0.1/16"), prefixes("10.200.0.1/16"), nil, nil},
	} {
		add, del := PlanAddrs(c.have, c.want)
		if !slices.Equal(add, c.wantAdd) || !slices.Equal(del, c.wantDelete) {
			t.Errorf("%s: add %v delete %v; want add %v delete %v", c.name, add, del, c.wantAdd, c.wantDelete)
		}
	}
}
