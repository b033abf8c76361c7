package linuxnet

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Forwarding follows the families the overlay needs: IPv4 only leaves
// IPv6 forwarding alone; IPv6 first moves the interfaces that use router
// advertisements to accept_ra=2 (and only those: not one that merely has
// accept_ra=1, nor one of ours); what it changed is put back when no
// longer needed, also by a later process reading the state file; what
// someone else changed meanwhile, or what was on before, stays.
func TestForwardingFollowsTheOverlay(t *testing.T) {
	if !inHostNetns(t) {
		return
	}
	if readSysctl(t, "net/ipv4/ip_forward") != "0" || readSysctl(t, "net/ipv6/conf/all/forwarding") != "0" {
		t.Skip("skipped: forwarding is already on in a fresh namespace on this kernel")
	}
	id := testID(t)
	ra, plain, ours := "zltl"+id+"r", "zltl"+id+"p", "zl-t"+id
	for _, dev := range []string{ra, plain, ours} {
		// A veth pair with both ends up has a carrier (this kernel has no
		// dummy devices).
		mustRun(t, "ip", "link", "add", dev, "type", "veth", "peer", "name", dev+"x")
		mustRun(t, "ip", "link", "set", dev+"x", "up")
		mustRun(t, "ip", "link", "set", dev, "up")
		if err := SetSysctl("net/ipv6/conf/"+dev+"/accept_ra", "1"); err != nil {
			t.Fatal(err)
		}
	}
	// What a host configured from router advertisements has: a default
	// route and a prefix route learned from them.
	mustRun(t, "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", ra, "proto", "ra", "metric", "1024")
	mustRun(t, "ip", "-6", "route", "add", "2001:db8:7::/64", "dev", ra, "proto", "ra")
	mustRun(t, "ip", "-6", "route", "add", "2001:db8:8::/64", "dev", ours, "proto", "ra")
	state := filepath.Join(t.TempDir(), "forwarding.json")
	acceptRA := func(dev string) string { return readSysctl(t, "net/ipv6/conf/"+dev+"/accept_ra") }
	sync := func(f *Forwarding, v4, v6 bool, wantEnabled, wantRestored []string) {
		t.Helper()
		enabled, restored, err := f.Sync(func() (bool, bool) { return v4, v6 })
		if err != nil {
			t.Fatalf("Sync(v4=%v, v6=%v): %v", v4, v6, err)
		}
		if !slices.Equal(enabled, wantEnabled) || !slices.Equal(restored, wantRestored) {
			t.Fatalf("Sync(v4=%v, v6=%v) enabled %v and restored %v; want %v and %v", v4, v6, enabled, restored, wantEnabled, wantRestored)
		}
	}
	knob := func(dev string) string { return "net.ipv6.conf." + dev + ".accept_ra" }

	f := NewForwarding(state)
	sync(f, true, false, []string{"net.ipv4.ip_forward"}, nil)
	if got := readSysctl(t, "net/ipv6/conf/all/forwarding"); got != "0" {
		t.Fatalf("IPv4 only: net.ipv6.conf.all.forwarding=%s", got)
	}
	sync(f, true, false, nil, nil)

	sync(f, true, true, []string{knob(ra), "net.ipv6.conf.all.forwarding"}, nil)
	if acceptRA(ra) != "2" || acceptRA(plain) != "1" || acceptRA(ours) != "1" {
		t.Fatalf("accept_ra after IPv6 forwarding: %s=%s %s=%s %s=%s; want 2 only where RAs are in use and the interface is not ours",
			ra, acceptRA(ra), plain, acceptRA(plain), ours, acceptRA(ours))
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v, %v; want it 0600", fi, err)
	}

	// A new process (a restarted daemon) restores what the first changed.
	f = NewForwarding(state)
	sync(f, true, false, nil, []string{"net.ipv6.conf.all.forwarding", knob(ra)})
	if acceptRA(ra) != "1" || readSysctl(t, "net/ipv6/conf/all/forwarding") != "0" {
		t.Fatalf("IPv6 not put back: accept_ra %s, forwarding %s", acceptRA(ra), readSysctl(t, "net/ipv6/conf/all/forwarding"))
	}

	// An administrator's change wins over ours.
	sync(f, true, true, []string{knob(ra), "net.ipv6.conf.all.forwarding"}, nil)
	if err := SetSysctl("net/ipv6/conf/"+ra+"/accept_ra", "0"); err != nil {
		t.Fatal(err)
	}
	sync(f, false, false, nil, []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"})
	if acceptRA(ra) != "0" || readSysctl(t, "net/ipv4/ip_forward") != "0" {
		t.Fatalf("after the last overlay: accept_ra %s (the administrator set 0), ip_forward %s", acceptRA(ra), readSysctl(t, "net/ipv4/ip_forward"))
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("state file left after everything was restored: %v", err)
	}

	// Forwarding that was on before is not ours to turn off.
	if err := SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	sync(f, true, false, nil, nil)
	sync(f, false, false, nil, nil)
	if got := readSysctl(t, "net/ipv4/ip_forward"); got != "1" {
		t.Fatalf("ip_forward was on before us and is %s now", got)
	}
}

// A state file that is not ours is refused before anything changes, with
// a message that says what to do.
func TestForwardingRefusesAForeignStateFile(t *testing.T) {
	for _, content := range []string{"not json", `{"../../etc/passwd": {"was": "0", "set": "1"}}`} {
		state := filepath.Join(t.TempDir(), "forwarding.json")
		if err := os.WriteFile(state, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		called := false
		_, _, err := NewForwarding(state).Sync(func() (bool, bool) { called = true; return true, true })
		if err == nil || !strings.Contains(err.Error(), state) || called {
			t.Errorf("state file %q: err %v, need consulted %v; want an error naming the file before anything else", content, err, called)
		}
	}
}
