//go:build linux

package vm

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The markers init.sh writes around each suite on the report port.
const markerPrefix = "=== ZLVM "

// Report is what one boot of the guest reported.
type Report struct {
	// Booted is the guest's `uname -r` and size, empty if init never ran.
	Booted string
	Suites []SuiteResult
	// Modules are the modules loaded when the last suite had run: what
	// the suites made the kernel autoload.
	Modules []string
	// Done is true when init got through every suite.
	Done bool
	// Console is what the kernel (and init, on errors) wrote on ttyS0.
	Console string
}

// SuiteResult is one suite's outcome in the guest.
type SuiteResult struct {
	Name     string
	ExitCode int
	Duration time.Duration
	Output   string
	// Leftover lists the namespaces, links of the root namespace and
	// UAPI sockets the suite created and did not remove.
	Leftover string
	// Finished is false when the guest stopped in the middle of it.
	Finished bool
}

// Passed reports whether the suite ran to the end, exited 0 and cleaned up.
func (s SuiteResult) Passed() bool { return s.Finished && s.ExitCode == 0 && s.Leftover == "" }

// Skipped lists the tests the suite's verbose output says were skipped.
func (s SuiteResult) Skipped() []string { return testsWith(s.Output, "--- SKIP: ") }

// Failed lists the tests that failed.
func (s SuiteResult) Failed() []string { return testsWith(s.Output, "--- FAIL: ") }

func testsWith(out, prefix string) []string {
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(line, prefix); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				names = append(names, f[0])
			}
		}
	}
	return names
}

// parseReport reads the report port's capture. Carriage returns a
// terminal driver may add are dropped.
func parseReport(raw string) (Report, error) {
	var r Report
	var cur *SuiteResult
	var out strings.Builder
	sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(raw, "\r", "")))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, isMarker := strings.CutPrefix(line, markerPrefix)
		if !isMarker {
			if cur != nil {
				out.WriteString(line)
				out.WriteByte('\n')
			}
			continue
		}
		word, arg, _ := strings.Cut(rest, " ")
		switch word {
		case "BOOTED":
			r.Booted = arg
		case "BEGIN":
			r.Suites = append(r.Suites, SuiteResult{Name: arg, ExitCode: -1})
			cur = &r.Suites[len(r.Suites)-1]
			out.Reset()
		case "END":
			if cur == nil {
				return r, fmt.Errorf("report: END without BEGIN: %q", line)
			}
			if err := parseEnd(cur, arg); err != nil {
				return r, err
			}
			cur.Output = out.String()
			cur = nil
		case "LEFTOVER":
			name, what, _ := strings.Cut(arg, " ")
			if n := len(r.Suites); n > 0 && r.Suites[n-1].Name == name {
				r.Suites[n-1].Leftover = strings.TrimSpace(what)
			}
		case "MODULES":
			r.Modules = strings.Fields(arg)
		case "DONE":
			r.Done = true
		}
	}
	if cur != nil {
		cur.Output = out.String()
	}
	return r, sc.Err()
}

// parseEnd reads "<name> rc=<n> seconds=<n>".
func parseEnd(s *SuiteResult, arg string) error {
	f := strings.Fields(arg)
	if len(f) != 3 || f[0] != s.Name {
		return fmt.Errorf("report: END %q does not close suite %q", arg, s.Name)
	}
	rc, err1 := strconv.Atoi(strings.TrimPrefix(f[1], "rc="))
	secs, err2 := strconv.Atoi(strings.TrimPrefix(f[2], "seconds="))
	if err1 != nil || err2 != nil {
		return fmt.Errorf("report: malformed END %q", arg)
	}
	s.ExitCode, s.Duration, s.Finished = rc, time.Duration(secs)*time.Second, true
	return nil
}
