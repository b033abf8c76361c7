package store

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
)

func benchStore(b *testing.B, noSync bool) *Store {
	b.Helper()
	s, err := Open(b.TempDir()+"/"+FileName, Options{Logger: quietLogger(), NoSync: noSync})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func benchAttachment(i int) Attachment {
	return Attachment{
		Key: "linux_pid:" + strconv.Itoa(i), Platform: "linux_pid", PID: uint32(i), Service: "web",
		IP: "10.200.3.67", GlobalIP: "10.200.3.9", HostLink: "zl-v4242a", HostLinkGlobal: "zl-v4242b",
		NetnsInode: 4026532201, StartTime: 123456789, DNSServer: "10.200.3.65", DNSDomain: "web.prod.zlayer",
		CreatedUnix: 1700000000,
	}
}

// BenchmarkUpdateAttachment is the store's share of one attach: one record, one commit.
func BenchmarkUpdateAttachment(b *testing.B) {
	for _, noSync := range []bool{false, true} {
		name := "fsync"
		if noSync {
			name = "nosync"
		}
		b.Run(name, func(b *testing.B) {
			s := benchStore(b, noSync)
			i := 0
			for b.Loop() {
				i++
				if err := s.Update(func(tx *Tx) error { return tx.PutAttachment(benchAttachment(i)) }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUpdateAttachmentParallel shows group commit: concurrent attaches share fsyncs.
func BenchmarkUpdateAttachmentParallel(b *testing.B) {
	s := benchStore(b, false)
	var next atomic.Int64
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1))
			if err := s.Update(func(tx *Tx) error { return tx.PutAttachment(benchAttachment(i)) }); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func populated(b *testing.B) string {
	b.Helper()
	path := b.TempDir() + "/" + FileName
	s, err := Open(path, Options{Logger: quietLogger(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	err = s.Update(func(tx *Tx) error {
		for i := range 1000 {
			key := fmt.Sprintf("cGVlcmtleXBlZXJrZXlwZWVya2V5cGVlcmtleXBl%04d=", i)
			err := tx.PutPeer(Peer{Scope: "global", PublicKey: key, Endpoint: "192.0.2.1:51820",
				AllowedIPs: []string{fmt.Sprintf("10.%d.%d.0/24", 200+i/256, i%256)}, Keepalive: 25})
			if err != nil {
				return err
			}
			if err := tx.PutAttachment(benchAttachment(i)); err != nil {
				return err
			}
		}
		for i := range 2000 {
			err := tx.PutAllocation(Allocation{Pool: "service:web", Addr: fmt.Sprintf("10.201.%d.%d", i/256, i%256), Owner: "api"})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkLoad is the daemon's start: 1000 peers, 1000 attachments, 2000 allocations.
func BenchmarkLoad(b *testing.B) {
	path := populated(b)
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for b.Loop() {
		st, err := s.Load()
		if err != nil || len(st.Peers) != 1000 || len(st.Attachments) != 1000 || len(st.Allocations) != 2000 {
			b.Fatalf("Load: %v", err)
		}
	}
}

// BenchmarkOpen includes the page walk that refuses damaged files, on the same state.
func BenchmarkOpen(b *testing.B) {
	path := populated(b)
	for b.Loop() {
		s, err := Open(path, Options{Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
