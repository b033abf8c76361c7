package packaging

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestWindowsNoteMatchesTheCode keeps the install note honest: the service
// name is the one the daemon registers with the SCM, and every flag it
// tells operators to use exists.
func TestWindowsNoteMatchesTheCode(t *testing.T) {
	note, err := os.ReadFile("windows/README.md")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := os.ReadFile("../cmd/zlayer-overlayd/service_windows.go")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`const serviceName = "([^"]+)"`).FindSubmatch(svc)
	if m == nil {
		t.Fatal("service_windows.go declares no serviceName")
	}
	name := string(m[1])
	if name != "ZLayerDaemon-Overlayd" {
		t.Errorf("the daemon registers as %q; the main daemon starts ZLayerDaemon-Overlayd", name)
	}
	for _, want := range []string{"sc.exe create " + name, "sc.exe start " + name, `\\.\pipe\zlayer-overlayd`, "wintun.dll"} {
		if !strings.Contains(string(note), want) {
			t.Errorf("the install note does not mention %q", want)
		}
	}
	mainSrc, err := os.ReadFile("../cmd/zlayer-overlayd/main.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range regexp.MustCompile(`(?m)--([a-z][a-z-]+)`).FindAllStringSubmatch(string(note), -1) {
		if !strings.Contains(string(mainSrc), `"`+f[1]+`"`) {
			t.Errorf("the install note uses --%s, which the daemon does not have", f[1])
		}
	}
}
