package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// realDB writes a store with enough records to span many pages and returns its bytes.
func realDB(t *testing.T) []byte {
	t.Helper()
	path := tempPath(t)
	s, err := Open(path, Options{Logger: quietLogger(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		err := s.Update(func(tx *Tx) error {
			return tx.PutAttachment(Attachment{Key: fmt.Sprintf("linux_pid:%d", i), PID: uint32(i), DNSDomain: strings.Repeat("x", 100)})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// highWaterMark is the byte offset the file's newest meta page says its data runs to.
func highWaterMark(t *testing.T, data []byte) int {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "hwm")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(data)
	m0, ok0, _ := readMeta(f, 0)
	if !ok0 {
		t.Fatal("real database has no valid first meta page")
	}
	m1, ok1, _ := readMeta(f, int64(m0.pageSize))
	if ok1 && m1.txid > m0.txid {
		m0 = m1
	}
	return int(m0.pgid) * int(m0.pageSize)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestOpenRefusesUnusableFilesAndLeavesThemUntouched(t *testing.T) {
	good := realDB(t)
	hwm := highWaterMark(t, good)
	if hwm <= 4*4096 {
		t.Fatalf("test database too small to cut meaningfully: data runs to %d", hwm)
	}

	// Garbage over every data page, keeping the valid meta pages and the length.
	scrambled := bytes.Clone(good)
	copy(scrambled[2*4096:], randomBytes(len(scrambled)-2*4096))

	// Garbage over every page but the meta and freelist pages, so bbolt opens it and only
	// a walk of the pages finds the damage.
	leavesOnly := bytes.Clone(good)
	meta := good[16:]
	freelist := int(binary.NativeEndian.Uint64(meta[32:]))
	overflow := int(binary.NativeEndian.Uint32(good[freelist*4096+12:]))
	for pg := 2; pg < hwm/4096; pg++ {
		if pg < freelist || pg > freelist+overflow {
			copy(leavesOnly[pg*4096:(pg+1)*4096], randomBytes(4096))
		}
	}

	// A foreign bbolt file: valid, but not ours.
	foreignPath := filepath.Join(t.TempDir(), "foreign.db")
	rawUpdate(t, foreignPath, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("etcd"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	})
	foreign, err := os.ReadFile(foreignPath)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		content []byte
		want    string
	}{
		{"zero-length", nil, "empty"},
		{"text", []byte("this is not a database\n"), "not a bbolt database"},
		{"random 64KiB", randomBytes(64 << 10), "not a bbolt database"},
		{"cut inside first meta page", good[:50], "not a bbolt database"},
		{"cut after first meta page", good[:100], "truncated"},
		{"cut inside second meta page", good[:4096+100], "truncated"},
		{"cut after meta pages", good[:2*4096], "truncated"},
		{"cut in half", good[:hwm/2], "truncated"},
		{"cut one byte short", good[:hwm-1], "truncated"},
		{"damaged pages", scrambled, "bbolt could not read it"},
		{"damaged data pages", leavesOnly, "pages are damaged"},
		{"foreign bbolt file", foreign, "not a zlayer-overlayd state file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := tempPath(t)
			if err := os.WriteFile(path, c.content, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path, Options{Logger: quietLogger()})
			if err == nil {
				s.Close()
				t.Fatal("Open accepted it")
			}
			t.Log(err)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v\nwant ErrCorrupt naming %s and saying %q", err, path, c.want)
			}
			if !strings.Contains(err.Error(), "move it aside") {
				t.Errorf("err = %v\nwant it to say what to do", err)
			}
			after, rerr := os.ReadFile(path)
			if rerr != nil || !bytes.Equal(after, c.content) {
				t.Errorf("file changed: %d bytes before, %d after (%v)", len(c.content), len(after), rerr)
			}
		})
	}
}

func TestOpenRefusesNewerSchemaAndLeavesFileUntouched(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	s.Close()
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(SchemaVersion+1)))
	})
	os.Chmod(path, 0o644)
	before, _ := os.ReadFile(path)

	_, err := Open(path, Options{Logger: quietLogger()})
	if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "newer release") {
		t.Fatalf("err = %v, want ErrNewerSchema naming %s", err, path)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("refused file changed")
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o644 {
		t.Errorf("refused file's mode changed to %04o", info.Mode().Perm())
	}
}

func TestOpenFixesGroupOrWorldAccessibleFile(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	s.Close()

	for _, tc := range []struct {
		mode     os.FileMode
		wantWarn bool
	}{{0o644, true}, {0o660, true}, {0o600, false}} {
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		var log bytes.Buffer
		s, err := Open(path, Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		info, _ := os.Stat(path)
		if got := info.Mode().Perm(); got != 0o600 {
			t.Errorf("mode %04o: after Open the file is %04o, want 0600", tc.mode, got)
		}
		warned := strings.Contains(log.String(), "level=WARN")
		if warned != tc.wantWarn {
			t.Errorf("mode %04o: warned = %v, want %v (log %q)", tc.mode, warned, tc.wantWarn, log.String())
		}
		if tc.wantWarn && (!strings.Contains(log.String(), path) || !strings.Contains(log.String(), fmt.Sprintf("%04o", tc.mode))) {
			t.Errorf("mode %04o: warning %q does not name the file and its old mode", tc.mode, log.String())
		}
	}
}

// An empty bbolt file (bbolt initialised it, then we crashed before laying it out) is new.
func TestOpenLaysOutEmptyBoltFile(t *testing.T) {
	path := tempPath(t)
	rawUpdate(t, path, func(*bolt.Tx) error { return nil })
	s := mustOpen(t, path)
	if mustLoad(t, s).Node.Identity == "" {
		t.Fatal("no node identity created")
	}
}

func TestMigrationsRunInOrderInOneTransaction(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	err := s.Update(func(tx *Tx) error {
		return errors.Join(tx.PutDNS(DNSRecord{Name: "a.zlayer.", Addrs: []string{"10.0.0.1"}}),
			tx.PutDNS(DNSRecord{Name: "b.zlayer.", Addrs: []string{"10.0.0.2"}}))
	})
	if err != nil {
		t.Fatal(err)
	}
	identity := mustLoad(t, s).Node.Identity
	s.Close()

	// A pretend version 2 that moves every DNS record into a new bucket, version 3 that
	// moves them back with a suffix. Each step counts its runs.
	runs := map[int]int{}
	v2 := migration{From: 1, Apply: func(tx *bolt.Tx) error {
		runs[1]++
		nb, err := tx.CreateBucket([]byte("dns_v2"))
		if err != nil {
			return err
		}
		return tx.Bucket(bucketDNS).ForEach(func(k, v []byte) error { return nb.Put(k, v) })
	}}
	v3 := migration{From: 2, Apply: func(tx *bolt.Tx) error {
		runs[2]++
		return tx.DeleteBucket([]byte("dns_v2"))
	}}
	failing := migration{From: 2, Apply: func(tx *bolt.Tx) error { return errors.New("step 2 cannot") }}

	before, _ := os.ReadFile(path)
	_, err = open(path, Options{Logger: quietLogger()}, schema{Version: 3, Migrations: []migration{v2, failing}})
	if err == nil || !strings.Contains(err.Error(), "step 2 cannot") {
		t.Fatalf("failing migration: err = %v", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a failed migration changed the file: step 1 was not rolled back")
	}
	if v := rawGet(t, path, bucketMeta, keySchemaVersion); string(v) != "1" {
		t.Fatalf("after a failed migration the version is %q, want 1", v)
	}

	_, err = open(path, Options{Logger: quietLogger()}, schema{Version: 3, Migrations: []migration{v3}})
	if err == nil || !strings.Contains(err.Error(), "no migration from schema version 1") {
		t.Fatalf("missing migration: err = %v", err)
	}

	clear(runs)
	sc := schema{Version: 3, Migrations: []migration{v3, v2}} // registry order does not matter
	s, err = open(path, Options{Logger: quietLogger()}, sc)
	if err != nil {
		t.Fatal(err)
	}
	st := mustLoad(t, s)
	s.Close()
	if runs[1] != 1 || runs[2] != 1 {
		t.Fatalf("migration runs = %v, want each step once", runs)
	}
	if st.Node.Identity != identity || len(st.DNS) != 2 {
		t.Fatalf("state after migration: %+v", st)
	}
	if v := rawGet(t, path, bucketMeta, keySchemaVersion); string(v) != "3" {
		t.Fatalf("version after migration = %q, want 3", v)
	}

	s, err = open(path, Options{Logger: quietLogger()}, sc)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if runs[1] != 1 || runs[2] != 1 {
		t.Fatalf("reopening at the current version re-ran migrations: %v", runs)
	}
	// This binary's real schema is older than the file now.
	if _, err := Open(path, Options{Logger: quietLogger()}); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("Open of a migrated-ahead file: err = %v, want ErrNewerSchema", err)
	}

	// A new file is laid out at version 1 and migrated like an old one.
	clear(runs)
	fresh := tempPath(t)
	s, err = open(fresh, Options{Logger: quietLogger()}, sc)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if runs[1] != 1 || runs[2] != 1 || string(rawGet(t, fresh, bucketMeta, keySchemaVersion)) != "3" {
		t.Fatalf("new file: runs %v, version %q", runs, rawGet(t, fresh, bucketMeta, keySchemaVersion))
	}
}
