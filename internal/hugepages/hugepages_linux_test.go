package hugepages

import (
	"os"
	"testing"
)

// Needs no privilege: any process may refuse huge pages for itself.
func TestRefuse(t *testing.T) {
	refused, known, err := Refused(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !known {
		t.Skip("this kernel's /proc status has no THP_enabled (before Linux 5.0)")
	}
	if refused {
		t.Fatal("this test process refused huge pages before it asked: the test would prove nothing")
	}
	if err := Refuse(); err != nil {
		t.Fatal(err)
	}
	if refused, _, err = Refused(os.Getpid()); err != nil || !refused {
		t.Fatalf("THP_enabled is not 0 after Refuse (%v)", err)
	}
}
