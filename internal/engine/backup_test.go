package engine

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/firewall"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// backup is refused to a caller the daemon did not mark privileged (a
// member of group zlayer), answers a bad place with an err and keeps
// serving, and writes a copy that a new engine starts from with the same
// peers.
func TestBackupNeedsAPrivilegedCallerAndRestores(t *testing.T) {
	h := newHarness(t)
	h.ok(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.3.0/24", WGPort: 51820})
	key := newKey(t).PublicKey().String()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: key, Endpoint: "192.0.2.10:51820", AllowedIPs: "10.200.4.0/24"}})
	dir := t.TempDir()
	path := filepath.Join(dir, "overlayd.db")

	h.fails(protocol.Backup{Path: path}, "only root or the daemon's own user")
	if _, err := os.Stat(path); err == nil {
		t.Fatal("an unprivileged backup wrote the file")
	}
	priv := WithPrivilegedCaller(context.Background())
	for _, bad := range []string{"", "relative.db", filepath.Join(dir, "no", "such.db")} {
		if _, ok := h.e.Handle(priv, protocol.Backup{Path: bad}).(protocol.Err); !ok {
			t.Fatalf("backup to %q was not refused", bad)
		}
	}
	resp, ok := h.e.Handle(priv, protocol.Backup{Path: path}).(protocol.BackupDone)
	if !ok || resp.Path != path || resp.Bytes <= 0 {
		t.Fatalf("backup answered %+v", resp)
	}
	h.ok(protocol.Status{}) // still serving

	// Restore: a new engine on a data dir holding only the copy.
	st, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	e, err := New(Config{Store: st, ReconcileInterval: -1, HealthInterval: -1, Log: h.e.log})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var peers []string
	e.locked(func() {
		for _, p := range e.st.peers {
			peers = append(peers, p.PublicKey)
		}
	})
	if len(peers) != 1 || peers[0] != key {
		t.Fatalf("restored engine has peers %v, want [%s]", peers, key)
	}
}

// list_dns lists every registered name fully qualified and sorted; with
// DNS off it says so.
func TestListDNS(t *testing.T) {
	e := newDNSEngine(t)
	ctx := context.Background()
	for _, r := range []protocol.RegisterDNS{
		{Name: "web", IP: netip.MustParseAddr("10.200.3.18")},
		{Name: "web", IP: netip.MustParseAddr("10.200.3.19")},
		{Name: "api", IP: netip.MustParseAddr("fd00::1")},
	} {
		if resp := e.Handle(ctx, r); resp.Result() != "ok" {
			t.Fatalf("%+v: %+v", r, resp)
		}
	}
	got, ok := e.Handle(ctx, protocol.ListDNS{}).(protocol.DNSRecords)
	if !ok {
		t.Fatalf("list_dns answered %+v", e.Handle(ctx, protocol.ListDNS{}))
	}
	want := protocol.DNSRecords{Zone: "zlayer.local", Records: []protocol.DNSRecord{
		{Name: "api.zlayer.local", IPs: []netip.Addr{netip.MustParseAddr("fd00::1")}},
		{Name: "web.zlayer.local", IPs: []netip.Addr{netip.MustParseAddr("10.200.3.18"), netip.MustParseAddr("10.200.3.19")}},
	}}
	if got.Zone != want.Zone || len(got.Records) != 2 || got.Records[0].Name != want.Records[0].Name ||
		got.Records[1].Name != want.Records[1].Name || len(got.Records[1].IPs) != 2 || got.Records[1].IPs[1] != want.Records[1].IPs[1] {
		t.Fatalf("list_dns = %+v, want %+v", got, want)
	}

	h := newHarness(t)
	h.fails(protocol.ListDNS{}, "DNS server is disabled")
}

type recordingObserver struct {
	mu         sync.Mutex
	reconciles []error
	fwFailures int
}

func (o *recordingObserver) ReconcileDone(took time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if took < 0 {
		panic("negative duration")
	}
	o.reconciles = append(o.reconciles, err)
}

func (o *recordingObserver) FirewallSyncFailed() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fwFailures++
}

// failingFirewall refuses every change, like a kernel without nf_tables.
type failingFirewall struct{}

func (failingFirewall) Apply(firewall.Spec) error {
	return errors.New("nf_tables: operation not supported")
}
func (failingFirewall) Delete(string) error                    { return errors.New("nf_tables: operation not supported") }
func (failingFirewall) Drifted(firewall.Spec) (bool, error)    { return true, nil }
func (failingFirewall) Inspect(string) (firewall.State, error) { return firewall.State{}, nil }

// The observer hears of every reconcile pass (the one at start included)
// and of every failed firewall rebuild.
func TestObserverSeesReconcilesAndFirewallFailures(t *testing.T) {
	obs := &recordingObserver{}
	h := newHarnessWith(t, func(c *Config) {
		c.Observer = obs
		c.Firewall = &FirewallConfig{Firewall: failingFirewall{}}
	})
	obs.mu.Lock()
	atStart := len(obs.reconciles)
	obs.mu.Unlock()
	if atStart != 1 {
		t.Fatalf("%d reconcile passes observed at start, want 1", atStart)
	}
	h.ok(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "1", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.3.0/24", WGPort: 51820})
	if _, err := h.e.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.reconciles) != 2 {
		t.Fatalf("%d reconcile passes observed, want 2", len(obs.reconciles))
	}
	if obs.fwFailures < 2 {
		t.Fatalf("%d firewall failures observed; setup and the pass each failed to build the table", obs.fwFailures)
	}
}
