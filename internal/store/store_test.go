package store

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func tempPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), FileName)
}

func mustOpen(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustLoad(t *testing.T, s *Store) *State {
	t.Helper()
	st, err := s.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return st
}

// rawUpdate edits the file with bbolt directly, as another program (or a bug) might.
func rawUpdate(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("raw bolt open: %v", err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatalf("raw bolt update: %v", err)
	}
}

func rawGet(t *testing.T, path string, bucket, key []byte) []byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("raw bolt open: %v", err)
	}
	defer db.Close()
	var v []byte
	db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucket); b != nil {
			v = bytes.Clone(b.Get(key))
		}
		return nil
	})
	return v
}

func TestOpenCreatesPrivateFileInPrivateDirs(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "var", "lib", FileName)
	s := mustOpen(t, path)

	if s.Path() != path {
		t.Errorf("Path() = %q, want %q", s.Path(), path)
	}
	for _, dir := range []string{filepath.Join(root, "var"), filepath.Join(root, "var", "lib")} {
		info, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != 0o700 {
			t.Errorf("%s has mode %04o, want 0700", dir, got)
		}
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("state file has mode %04o, want 0600", got)
	}
}

func TestLoadOfEmptyStore(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	st := mustLoad(t, s)

	if len(st.Node.Identity) != 32 || strings.Trim(st.Node.Identity, "0123456789abcdef") != "" {
		t.Errorf("node identity %q is not 128-bit lower-case hex", st.Node.Identity)
	}
	if st.Node.CreatedUnix == 0 {
		t.Error("node CreatedUnix not set")
	}
	if st.Global != nil || len(st.Services) != 0 || len(st.Allocations) != 0 || len(st.Attachments) != 0 ||
		len(st.Peers) != 0 || len(st.DNS) != 0 {
		t.Errorf("new store is not empty: %+v", st)
	}
	s.Close()
	if got := string(rawGet(t, path, bucketMeta, keySchemaVersion)); got != "1" {
		t.Errorf("stored schema version = %q, want %q", got, "1")
	}
}

func TestNodeIdentityIsPermanent(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	first := mustLoad(t, s).Node
	s.Close()

	s = mustOpen(t, path)
	if got := mustLoad(t, s).Node.Identity; got != first.Identity {
		t.Fatalf("identity changed across reopen: %s -> %s", first.Identity, got)
	}
	err := s.Update(func(tx *Tx) error {
		n := first
		n.Identity = strings.Repeat("0", 32)
		return tx.PutNode(n)
	})
	if err == nil || !strings.Contains(err.Error(), "permanent") {
		t.Fatalf("changing the identity: err = %v, want a refusal", err)
	}
	err = s.Update(func(tx *Tx) error {
		n := first
		n.NodeID, n.ExpectedPubkey = 7, "cHVia2V5"
		n.PrivateKey, n.ClusterCIDR, n.SliceCIDR, n.SliceExplicit = "cHJpdmF0ZWtleQ==", "10.200.0.0/16", "10.200.3.0/24", true
		return tx.PutNode(n)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustLoad(t, s).Node; got.NodeID != 7 || got.ExpectedPubkey != "cHVia2V5" || got.Identity != first.Identity ||
		got.PrivateKey != "cHJpdmF0ZWtleQ==" || got.SliceCIDR != "10.200.3.0/24" || !got.SliceExplicit || got.ClusterCIDR != "10.200.0.0/16" {
		t.Fatalf("node after update = %+v", got)
	}
}

func sampleRecords() (Global, Service, Allocation, Attachment, Peer, DNSRecord) {
	g := Global{
		Deployment: "prod", InstanceID: "i-1", ClusterCIDR: "10.200.0.0/16",
		NodeIP: "10.200.3.1", WGPort: 51820, NATEnabled: true, Interface: "zl-prod-g", MTU: 1420,
	}
	svc := Service{
		Name: "web", Mode: "dedicated", Subnet: "10.200.3.64/28", SubnetSource: "slice", Gateway: "10.200.3.65",
		Bridge: "zl-prod-web-b", Interface: "zl-prod-web-d", WGPort: 51821, PrivateKey: "c2VydmljZWtleQ==", OverlayIP: "10.200.3.66",
	}
	alloc := Allocation{Pool: "service:web", Addr: "10.200.3.67", Owner: "attach:linux_pid:4242"}
	att := Attachment{
		Key: "linux_pid:4242", Platform: "linux_pid", PID: 4242, Service: "web", IP: "10.200.3.67",
		GlobalIP: "10.200.3.9", HostLink: "zl-v4242a", HostLinkGlobal: "zl-v4242b", NetnsInode: 4026532201,
		StartTime: 123456789, DNSServer: "10.200.3.65", DNSDomain: "web.prod.zlayer", CreatedUnix: 1700000000,
	}
	peer := Peer{
		Scope: "global", PublicKey: "cGVlcmtleQ==", Endpoint: "node2.example:51820",
		AllowedIPs: []string{"10.200.4.0/24", "10.200.1.0/24", "10.200.4.0/24"}, Keepalive: 25,
		Candidates: []string{"192.0.2.7:51820", "198.51.100.3:40000"}, LearnedEndpoint: "203.0.113.9:61000", Guest: true,
	}
	dns := DNSRecord{Name: "Web.Prod.ZLayer.", Addrs: []string{"10.200.3.67", "10.200.3.2"}}
	return g, svc, alloc, att, peer, dns
}

func TestRoundTripEveryRecordType(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	g, svc, alloc, att, peer, dns := sampleRecords()
	err := s.Update(func(tx *Tx) error {
		return errors.Join(tx.PutGlobal(g), tx.PutService(svc), tx.PutAllocation(alloc),
			tx.PutAttachment(att), tx.PutPeer(peer), tx.PutDNS(dns))
	})
	if err != nil {
		t.Fatal(err)
	}
	node := mustLoad(t, s).Node
	s.Close()

	wantPeer := peer
	wantPeer.AllowedIPs = []string{"10.200.1.0/24", "10.200.4.0/24"}
	wantDNS := DNSRecord{Name: "web.prod.zlayer.", Addrs: dns.Addrs}
	want := &State{
		Node:        node,
		Global:      &g,
		Services:    map[string]Service{"web": svc},
		Allocations: []Allocation{alloc},
		Attachments: map[string]Attachment{att.Key: att},
		Peers:       []Peer{wantPeer},
		DNS:         map[string]DNSRecord{wantDNS.Name: wantDNS},
	}

	s = mustOpen(t, path)
	if got := mustLoad(t, s); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopen:\n got %+v\nwant %+v", got, want)
	}
	err = s.View(func(tx *Tx) error {
		checks := []struct {
			name      string
			got, want any
			err       error
		}{}
		add := func(name string, got, want any, err error) {
			checks = append(checks, struct {
				name      string
				got, want any
				err       error
			}{name, got, want, err})
		}
		gg, err := tx.Global()
		add("Global", gg, &g, err)
		gs, err := tx.Service("web")
		add("Service", gs, &svc, err)
		ga, err := tx.Allocation("service:web", "10.200.3.67")
		add("Allocation", ga, &alloc, err)
		gt, err := tx.Attachment(att.Key)
		add("Attachment", gt, &att, err)
		gp, err := tx.Peer("global", peer.PublicKey)
		add("Peer", gp, &wantPeer, err)
		gd, err := tx.DNS("WEB.prod.zlayer.")
		add("DNS", gd, &wantDNS, err)
		for _, c := range checks {
			if c.err != nil || !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("%s = %+v, %v; want %+v", c.name, c.got, c.err, c.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	err = s.Update(func(tx *Tx) error {
		return errors.Join(tx.DeleteGlobal(), tx.DeleteService("web"), tx.DeleteAllocation("service:web", "10.200.3.67"),
			tx.DeleteAttachment(att.Key), tx.DeletePeer("global", peer.PublicKey), tx.DeleteDNS("web.PROD.zlayer."),
			tx.DeleteAttachment("never-existed"))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, path)
	st := mustLoad(t, s)
	if st.Global != nil || len(st.Services)+len(st.Allocations)+len(st.Attachments)+len(st.Peers)+len(st.DNS) != 0 {
		t.Fatalf("after deleting everything: %+v", st)
	}
	err = s.View(func(tx *Tx) error {
		p, err := tx.Peer("global", peer.PublicKey)
		if p != nil || err != nil {
			t.Errorf("deleted peer lookup = %+v, %v; want nil, nil", p, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPutRejectsMissingOrAmbiguousKeys(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	cases := map[string]func(tx *Tx) error{
		"service without name":    func(tx *Tx) error { return tx.PutService(Service{Mode: "shared"}) },
		"allocation without addr": func(tx *Tx) error { return tx.PutAllocation(Allocation{Pool: "slice"}) },
		"allocation pool with |":  func(tx *Tx) error { return tx.PutAllocation(Allocation{Pool: "a|b", Addr: "10.0.0.1"}) },
		"attachment without key":  func(tx *Tx) error { return tx.PutAttachment(Attachment{PID: 1}) },
		"peer without scope":      func(tx *Tx) error { return tx.PutPeer(Peer{PublicKey: "k"}) },
		"peer key with |":         func(tx *Tx) error { return tx.PutPeer(Peer{Scope: "global", PublicKey: "a|b"}) },
		"dns without name":        func(tx *Tx) error { return tx.PutDNS(DNSRecord{Addrs: []string{"10.0.0.1"}}) },
		"node without identity":   func(tx *Tx) error { return tx.PutNode(Node{NodeID: 3}) },
	}
	for name, fn := range cases {
		if err := s.Update(fn); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestViewCannotWrite(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	err := s.View(func(tx *Tx) error { return tx.PutService(Service{Name: "web"}) })
	if !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Put in View: err = %v, want ErrReadOnly", err)
	}
}

func TestFailedUpdateLeavesNothingBehind(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	_, svc, alloc, att, peer, dns := sampleRecords()
	if err := s.Update(func(tx *Tx) error { return errors.Join(tx.PutService(svc), tx.PutPeer(peer)) }); err != nil {
		t.Fatal(err)
	}
	before := mustLoad(t, s)

	boom := errors.New("boom")
	err := s.Update(func(tx *Tx) error {
		changed := svc
		changed.Subnet = "10.9.9.0/24"
		if err := errors.Join(tx.PutService(changed), tx.DeletePeer(peer.Scope, peer.PublicKey),
			tx.PutAllocation(alloc), tx.PutAttachment(att), tx.PutDNS(dns)); err != nil {
			return err
		}
		// The transaction sees its own writes until it fails.
		if got, _ := tx.Service("web"); got == nil || got.Subnet != "10.9.9.0/24" {
			t.Errorf("write not visible inside its own transaction: %+v", got)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update err = %v, want the fn's error", err)
	}

	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Errorf("recovered %v, want the fn's panic", r)
			}
		}()
		s.Update(func(tx *Tx) error {
			tx.PutAttachment(att)
			tx.DeleteService("web")
			panic("kaboom")
		})
	}()

	if got := mustLoad(t, s); !reflect.DeepEqual(got, before) {
		t.Fatalf("a failed update left changes behind:\n got %+v\nwant %+v", got, before)
	}
	s.Close()
	s = mustOpen(t, path)
	if got := mustLoad(t, s); !reflect.DeepEqual(got, before) {
		t.Fatalf("after reopen, a failed update left changes behind:\n got %+v\nwant %+v", got, before)
	}
}

// waitQueued waits until n Update calls are queued behind a running commit.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.queueMu.Lock()
		got := len(s.queue)
		s.queueMu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d updates queued", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Updates queued behind a running commit share the next one; each must still succeed or
// fail on its own.
func TestUpdatesSharingACommitSucceedOrFailIndependently(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	const n = 32
	key := func(i int) string { return "linux_pid:" + strconv.Itoa(i) }
	update := func(i int) error {
		return s.Update(func(tx *Tx) error {
			if err := tx.PutAttachment(Attachment{Key: key(i), PID: uint32(i)}); err != nil {
				return err
			}
			// Every update also bumps a shared counter, so a failed neighbour's write
			// leaking into the commit, or a good one's being lost, would show.
			node, err := tx.Node()
			if err != nil {
				return err
			}
			node.NodeID++
			if err := tx.PutNode(node); err != nil {
				return err
			}
			if i%3 == 0 {
				return errors.New("odd one out")
			}
			return nil
		})
	}

	// Update 0 holds the commit open until all the others are queued behind it.
	entered, release := make(chan struct{}), make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // a failing test must not leave Close waiting on the commit
	firstDone := make(chan error, 1)
	go func() {
		firstDone <- s.Update(func(tx *Tx) error {
			close(entered)
			<-release
			return tx.PutService(Service{Name: "first"})
		})
	}()
	<-entered
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 1; i < n; i++ {
		wg.Go(func() { errs[i] = update(i) })
	}
	waitQueued(t, s, n-1)
	releaseOnce()
	wg.Wait()
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}

	st := mustLoad(t, s)
	if _, ok := st.Services["first"]; !ok {
		t.Error("the first update was lost")
	}
	ok := 0
	for i := 1; i < n; i++ {
		err := errs[i]
		_, stored := st.Attachments[key(i)]
		if wantFail := i%3 == 0; wantFail != (err != nil) {
			t.Errorf("update %d: err = %v", i, err)
		}
		if stored != (err == nil) {
			t.Errorf("update %d: err = %v but stored = %v", i, err, stored)
		}
		if err == nil {
			ok++
		}
	}
	if st.Node.NodeID != uint64(ok) {
		t.Errorf("shared counter = %d, want %d (one per successful update)", st.Node.NodeID, ok)
	}
}

func TestLoadToleratesUnknownFieldsButRefusesBadValues(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	s.Close()
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketServices).Put([]byte("web"), []byte(`{"name":"web","mode":"shared","added_in_a_later_release":{"x":1}}`))
	})
	s = mustOpen(t, path)
	if got := mustLoad(t, s).Services["web"]; got.Mode != "shared" {
		t.Fatalf("service with an unknown field loaded as %+v", got)
	}
	s.Close()

	cases := []struct {
		bucket, key []byte
		value       string
	}{
		{bucketAttachments, []byte("linux_pid:9"), `{"key":"linux_pid:9","pid":"not a number"}`},
		{bucketPeers, []byte("global|k"), `{not json`},
		{bucketDNS, []byte("a.zlayer."), `{"name":"b.zlayer.","addrs":[]}`},
	}
	for _, c := range cases {
		rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket(c.bucket).Put(c.key, []byte(c.value)) })
		s, err := Open(path, Options{Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Load()
		s.Close()
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), string(c.bucket)) || !strings.Contains(err.Error(), string(c.key)) {
			t.Errorf("Load with bad %s/%s: err = %v, want ErrCorrupt naming bucket and key", c.bucket, c.key, err)
		}
		rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket(c.bucket).Delete(c.key) })
	}
}

func TestUseAfterCloseIsAnError(t *testing.T) {
	path := tempPath(t)
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.Update(func(tx *Tx) error { return nil }); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Update after Close: err = %v", err)
	}
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Load after Close: err = %v", err)
	}
}
