package engine

import (
	"strings"
	"testing"
)

func TestIfName(t *testing.T) {
	cases := []struct {
		suffix string
		parts  []string
		want   string
	}{
		{"g", []string{"app"}, "zl-app-g"},
		{"g", []string{"prod"}, "zl-prod-g"},
		{"b", []string{"dep", "web"}, "zl-dep-web-b"},
		{"b", []string{"my", "web"}, "zl-my-web-b"},
	}
	for _, c := range cases {
		if got := ifName(c.suffix, c.parts...); got != c.want {
			t.Errorf("ifName(%q, %q) = %q, want %q", c.suffix, c.parts, got, c.want)
		}
	}
	seen := map[string]string{}
	for _, parts := range [][]string{
		{"zlayer", "manager"}, {"zlayer-manager"}, {"a-really-long-name-exceeding-everything"},
		{strings.Repeat("x", 200), strings.Repeat("y", 200)}, {"a-b", "c"}, {"a", "b-c"},
		{"deploy-a", "web"}, {"deploy-b", "web"}, {"with space"}, {"sl/ash"},
	} {
		for _, suffix := range []string{"g", "b", "d", "", "sixteencharsxxxx"} {
			n := ifName(suffix, parts...)
			if len(n) > 15 || !strings.HasPrefix(n, "zl-") || !validIfName(n) {
				t.Errorf("ifName(%q, %q) = %q: invalid", suffix, parts, n)
			}
			if n != ifName(suffix, parts...) {
				t.Errorf("not deterministic")
			}
			key := suffix + "|" + strings.Join(parts, "\x00")
			if other, dup := seen[n]; dup {
				t.Errorf("%q and %q both map to %s", key, other, n)
			}
			seen[n] = key
		}
	}
}

func TestVethName(t *testing.T) {
	for _, pid := range []uint32{1, 4242, maxPID} {
		for _, i := range []int{0, 1} {
			n := vethName(pid, i)
			if len(n) > 15 {
				t.Errorf("%s longer than 15", n)
			}
			p, idx, ok := parseVethName(n)
			if !ok || p != pid || idx != i {
				t.Errorf("parse %s = %d %d %v", n, p, idx, ok)
			}
		}
	}
	for _, bad := range []string{"veth-1-s", "zl-v-e0", "zl-vx-e0", "zl-v12-e2", "zl-prod-g"} {
		if _, _, ok := parseVethName(bad); ok {
			t.Errorf("%s parsed as ours", bad)
		}
	}
}
