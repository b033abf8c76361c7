package store

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// A backup taken while another goroutine commits a numbered sequence of records holds
// exactly a prefix of that sequence (one transaction: no later record without every earlier
// one), at least every record committed before it began; it is mode 0600 and opens as a
// state file of its own, which is what restoring it means.
func TestBackupIsAConsistentCopyWhileUpdating(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	put := func(i int) {
		t.Helper()
		if err := s.Update(func(tx *Tx) error {
			return tx.PutDNS(DNSRecord{Name: fmt.Sprintf("n%04d", i), Addrs: []string{"10.0.0.1"}})
		}); err != nil {
			t.Error(err)
		}
	}
	for i := range 50 {
		put(i)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 50; i < 5000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			put(i)
		}
	}()
	dir := t.TempDir()
	var copies []string
	for i := range 3 {
		p := filepath.Join(dir, fmt.Sprintf("b%d.db", i))
		n, err := s.Backup(p)
		if err != nil {
			t.Fatal(err)
		}
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if info.Size() != n {
			t.Fatalf("Backup reported %d bytes, the file has %d", n, info.Size())
		}
		if runtime.GOOS != "windows" && info.Mode().Perm() != 0o600 {
			t.Fatalf("backup has mode %04o, want 0600", info.Mode().Perm())
		}
		copies = append(copies, p)
	}
	close(stop)
	wg.Wait()
	for _, p := range copies {
		b := mustOpen(t, p)
		st := mustLoad(t, b)
		if len(st.DNS) < 50 {
			t.Fatalf("%s holds %d records; 50 were committed before it began", p, len(st.DNS))
		}
		for i := range len(st.DNS) {
			if _, ok := st.DNS[fmt.Sprintf("n%04d", i)]; !ok {
				t.Fatalf("%s holds %d records but not n%04d: not one transaction", p, len(st.DNS), i)
			}
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".part-") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}

// A second backup to the same path replaces the first (an earlier backup is a state file).
func TestBackupReplacesAnEarlierBackup(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	p := filepath.Join(t.TempDir(), "overlayd.db.bak")
	if _, err := s.Backup(p); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx *Tx) error { return tx.PutDNS(DNSRecord{Name: "later", Addrs: []string{"10.0.0.2"}}) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(p); err != nil {
		t.Fatalf("replacing an earlier backup: %v", err)
	}
	if st := mustLoad(t, mustOpen(t, p)); st.DNS["later"].Name == "" {
		t.Fatal("the second backup does not hold the record committed after the first")
	}
}

// Odd places are refused with a message that says why, and nothing there changes.
func TestBackupRefusesOddPlaces(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Unix placement rules")
	}
	live := tempPath(t)
	s := mustOpen(t, live)
	dir := t.TempDir()
	notState := filepath.Join(dir, "notes.txt")
	os.WriteFile(notState, []byte("keep me"), 0o600)
	link := filepath.Join(dir, "link.db")
	os.Symlink(notState, link)
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	for _, c := range []struct{ path, want string }{
		{"", "give the path"},
		{"backup.db", "relative"},
		{filepath.Join(dir, "missing", "b.db"), "does not exist"},
		{filepath.Join(open, "b.db"), "other users can write"},
		{"/proc/self/b.db", "not a place for files"},
		{"/dev/b.db", "not a place for files"},
		{notState, "not a zlayer-overlayd state file"},
		{link, "symbolic link"},
		{dir, "is a directory"},
		{live, "live state file"},
		{notState + "/x", "not a directory"},
	} {
		_, err := s.Backup(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Backup(%q) = %v, want an error saying %q", c.path, err, c.want)
		}
	}
	if b, _ := os.ReadFile(notState); string(b) != "keep me" {
		t.Fatalf("a refused backup changed %s", notState)
	}
	if entries, _ := os.ReadDir(open); len(entries) != 0 {
		t.Fatalf("a refused backup left %v", entries)
	}
	if _, err := os.Stat("/dev/b.db"); err == nil {
		t.Fatal("a refused backup left /dev/b.db")
	}
}
