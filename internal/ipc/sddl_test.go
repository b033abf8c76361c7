package ipc

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestPipeSDDLGolden pins the pipe's security descriptors: a change to who
// may drive the overlay on Windows must show up as a diff of
// testdata/pipe-sddl.golden.
func TestPipeSDDLGolden(t *testing.T) {
	var b strings.Builder
	for _, c := range []struct{ name, sid string }{
		{"no extra account (group zlayer does not exist)", ""},
		{"a local group", "S-1-5-21-3623811015-3361044348-30300820-1013"},
		{"a service's virtual account (NT SERVICE\\ZLayerDaemon)", "S-1-5-80-3509428946-2049131634-3154994107-1789538840-334771563"},
		{"SYSTEM again (no duplicate ACE)", "S-1-5-18"},
		{"Administrators again (no duplicate ACE)", "S-1-5-32-544"},
	} {
		sddl, err := PipeSDDL(c.sid)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		b.WriteString("# " + c.name + "\n" + sddl + "\n")
	}
	path := filepath.Join("testdata", "pipe-sddl.golden")
	if *updateGolden {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if b.String() != string(want) {
		t.Errorf("pipe SDDL changed:\n got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestPipeSDDLRefusesWhatIsNotASID(t *testing.T) {
	for _, bad := range []string{
		"zlayer", "S-1", "S-1-5-", "S-1-5--21", "s-1-5-18", "S-2-5-18", "S-1-5-18)(A;;GA;;;WD",
		"S-1-5-18 ", "S-1-5-1x", "BA", "S-1-5-123456789012345678901",
	} {
		if sddl, err := PipeSDDL(bad); err == nil {
			t.Errorf("PipeSDDL(%q) = %q, want an error", bad, sddl)
		}
	}
}

func TestAllowSIDs(t *testing.T) {
	const svc = "S-1-5-80-1-2-3-4-5"
	allowed := pipeAllowedSIDs(svc)
	if len(pipeAllowedSIDs(sidAdministrators)) != 2 || len(pipeAllowedSIDs("")) != 2 {
		t.Errorf("allowed SIDs duplicate or invent entries: %v / %v", pipeAllowedSIDs(sidAdministrators), pipeAllowedSIDs(""))
	}
	for _, c := range []struct {
		name   string
		user   string
		groups []string
		want   bool
	}{
		{"SYSTEM", sidLocalSystem, nil, true},
		{"elevated administrator", "S-1-5-21-9-9-9-1001", []string{"S-1-1-0", sidAdministrators}, true},
		{"the service account", svc, nil, true},
		{"member of the service group", "S-1-5-21-9-9-9-1002", []string{"S-1-1-0", svc}, true},
		{"ordinary user", "S-1-5-21-9-9-9-1003", []string{"S-1-1-0", "S-1-5-32-545"}, false},
		{"administrator, not elevated (group deny-only, so not passed)", "S-1-5-21-9-9-9-1001", []string{"S-1-1-0"}, false},
	} {
		if got := allowSIDs(allowed, c.user, c.groups); got != c.want {
			t.Errorf("%s: allowed=%v, want %v", c.name, got, c.want)
		}
	}
	if allowSIDs(pipeAllowedSIDs(""), svc, nil) {
		t.Error("an account allowed without being configured")
	}
}
