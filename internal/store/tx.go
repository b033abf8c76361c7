package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// keySep joins the two parts of Allocation and Peer keys. Neither part may contain it, so
// every key has exactly one reading.
const keySep = "|"

// Tx is one transaction over the store, valid only inside the function given to Update or
// View. Reads see every write made earlier in the same Update, including those of other
// Update calls committed in the same batch. Deleting an absent record is not an error.
type Tx struct {
	btx      *bolt.Tx
	writable bool
	// undo restores, newest first, what this Tx overwrote: it lets several Update calls
	// share one bbolt transaction while each one's failure erases only its own writes.
	undo []undoEntry
}

type undoEntry struct {
	bucket []byte
	key    []byte
	old    []byte // nil: the key did not exist
}

// ErrReadOnly is returned by the Put and Delete methods of a Tx from View.
var ErrReadOnly = errors.New("store: cannot write in a read-only transaction (use Update)")

func (tx *Tx) write(bucket, key, value []byte) error {
	if !tx.writable {
		return ErrReadOnly
	}
	b := tx.btx.Bucket(bucket)
	if b == nil {
		return fmt.Errorf("store: bucket %q is missing", bucket)
	}
	old := b.Get(key)
	if old != nil {
		old = bytes.Clone(old) // bbolt's slice is only valid until the next write
	}
	if value == nil && old == nil {
		return nil
	}
	tx.undo = append(tx.undo, undoEntry{bucket: bucket, key: bytes.Clone(key), old: old})
	if value == nil {
		return b.Delete(key)
	}
	return b.Put(key, value)
}

// revert undoes every write of this Tx, newest first.
func (tx *Tx) revert() error {
	for i := len(tx.undo) - 1; i >= 0; i-- {
		u := tx.undo[i]
		b := tx.btx.Bucket(u.bucket)
		var err error
		if u.old == nil {
			err = b.Delete(u.key)
		} else {
			err = b.Put(u.key, u.old)
		}
		if err != nil {
			return fmt.Errorf("store: undoing a failed update of %s/%s: %w", u.bucket, u.key, err)
		}
	}
	tx.undo = nil
	return nil
}

func (tx *Tx) put(bucket []byte, key string, v any) error {
	value, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encoding %s/%s: %w", bucket, key, err)
	}
	return tx.write(bucket, []byte(key), value)
}

func (tx *Tx) del(bucket []byte, key string) error {
	return tx.write(bucket, []byte(key), nil)
}

// get decodes the record at bucket/key into v and reports whether it exists.
func (tx *Tx) get(bucket []byte, key string, v any) (bool, error) {
	b := tx.btx.Bucket(bucket)
	if b == nil {
		return false, fmt.Errorf("store: bucket %q is missing", bucket)
	}
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, undecodable(bucket, []byte(key), err)
	}
	return true, nil
}

func undecodable(bucket, key []byte, err error) error {
	return fmt.Errorf("%w: bucket %q key %q holds a value that does not decode: %v", ErrCorrupt, bucket, key, err)
}

func requireKey(what, v string) error {
	if v == "" {
		return fmt.Errorf("store: %s must not be empty", what)
	}
	return nil
}

func requireKeyPart(what, v string) error {
	if err := requireKey(what, v); err != nil {
		return err
	}
	if strings.Contains(v, keySep) {
		return fmt.Errorf("store: %s %q must not contain %q", what, v, keySep)
	}
	return nil
}

// Node returns this node's identity record. Open guarantees it exists.
func (tx *Tx) Node() (Node, error) {
	var n Node
	ok, err := tx.get(bucketMeta, string(keyNode), &n)
	if err == nil && !ok {
		err = fmt.Errorf("%w: the node record is missing", ErrCorrupt)
	}
	return n, err
}

// PutNode stores n. The node's Identity is permanent: changing it is refused.
func (tx *Tx) PutNode(n Node) error {
	if err := requireKey("node identity", n.Identity); err != nil {
		return err
	}
	var cur Node
	ok, err := tx.get(bucketMeta, string(keyNode), &cur)
	if err != nil {
		return err
	}
	if ok && cur.Identity != n.Identity {
		return fmt.Errorf("store: the node identity is permanent: refusing to change %s to %s", cur.Identity, n.Identity)
	}
	return tx.put(bucketMeta, string(keyNode), n)
}

// Global returns the global overlay, or nil when none is set up.
func (tx *Tx) Global() (*Global, error) {
	var g Global
	if ok, err := tx.get(bucketMeta, string(keyGlobal), &g); !ok || err != nil {
		return nil, err
	}
	return &g, nil
}

// PutGlobal stores the global overlay, replacing any previous one.
func (tx *Tx) PutGlobal(g Global) error { return tx.put(bucketMeta, string(keyGlobal), g) }

// DeleteGlobal removes the global overlay.
func (tx *Tx) DeleteGlobal() error { return tx.del(bucketMeta, string(keyGlobal)) }

// Service returns the named service, or nil.
func (tx *Tx) Service(name string) (*Service, error) {
	var s Service
	if ok, err := tx.get(bucketServices, name, &s); !ok || err != nil {
		return nil, err
	}
	return &s, nil
}

// PutService stores s under s.Name.
func (tx *Tx) PutService(s Service) error {
	if err := requireKey("service name", s.Name); err != nil {
		return err
	}
	return tx.put(bucketServices, s.Name, s)
}

// DeleteService removes the named service. Its allocations, attachments and peers are
// separate records that the caller removes in the same transaction.
func (tx *Tx) DeleteService(name string) error { return tx.del(bucketServices, name) }

func allocationKey(pool, addr string) string { return pool + keySep + addr }

// Allocation returns the allocation of addr in pool, or nil.
func (tx *Tx) Allocation(pool, addr string) (*Allocation, error) {
	var a Allocation
	if ok, err := tx.get(bucketAllocations, allocationKey(pool, addr), &a); !ok || err != nil {
		return nil, err
	}
	return &a, nil
}

// PutAllocation stores a under a.Pool and a.Addr.
func (tx *Tx) PutAllocation(a Allocation) error {
	if err := requireKeyPart("allocation pool", a.Pool); err != nil {
		return err
	}
	if err := requireKeyPart("allocation address", a.Addr); err != nil {
		return err
	}
	return tx.put(bucketAllocations, allocationKey(a.Pool, a.Addr), a)
}

// DeleteAllocation frees addr in pool.
func (tx *Tx) DeleteAllocation(pool, addr string) error {
	return tx.del(bucketAllocations, allocationKey(pool, addr))
}

// Attachment returns the attachment with handle key, or nil.
func (tx *Tx) Attachment(key string) (*Attachment, error) {
	var a Attachment
	if ok, err := tx.get(bucketAttachments, key, &a); !ok || err != nil {
		return nil, err
	}
	return &a, nil
}

// PutAttachment stores a under a.Key.
func (tx *Tx) PutAttachment(a Attachment) error {
	if err := requireKey("attachment key", a.Key); err != nil {
		return err
	}
	return tx.put(bucketAttachments, a.Key, a)
}

// DeleteAttachment removes the attachment with handle key.
func (tx *Tx) DeleteAttachment(key string) error { return tx.del(bucketAttachments, key) }

func peerKey(scope, pubkey string) string { return scope + keySep + pubkey }

// Peer returns the peer with pubkey in scope, or nil.
func (tx *Tx) Peer(scope, pubkey string) (*Peer, error) {
	var p Peer
	if ok, err := tx.get(bucketPeers, peerKey(scope, pubkey), &p); !ok || err != nil {
		return nil, err
	}
	return &p, nil
}

// PutPeer stores p under p.Scope and p.PublicKey, with AllowedIPs sorted and deduplicated.
func (tx *Tx) PutPeer(p Peer) error {
	if err := requireKeyPart("peer scope", p.Scope); err != nil {
		return err
	}
	if err := requireKeyPart("peer public key", p.PublicKey); err != nil {
		return err
	}
	if p.AllowedIPs != nil {
		p.AllowedIPs = slices.Compact(slices.Sorted(slices.Values(p.AllowedIPs)))
	}
	return tx.put(bucketPeers, peerKey(p.Scope, p.PublicKey), p)
}

// DeletePeer removes the peer with pubkey in scope.
func (tx *Tx) DeletePeer(scope, pubkey string) error {
	return tx.del(bucketPeers, peerKey(scope, pubkey))
}

// DNS names are case-insensitive, so they are stored and looked up lower-cased.
func dnsKey(name string) string { return strings.ToLower(name) }

// DNS returns the record of name, or nil.
func (tx *Tx) DNS(name string) (*DNSRecord, error) {
	var r DNSRecord
	if ok, err := tx.get(bucketDNS, dnsKey(name), &r); !ok || err != nil {
		return nil, err
	}
	return &r, nil
}

// PutDNS stores r under its lower-cased Name.
func (tx *Tx) PutDNS(r DNSRecord) error {
	if err := requireKey("DNS name", r.Name); err != nil {
		return err
	}
	r.Name = dnsKey(r.Name)
	return tx.put(bucketDNS, r.Name, r)
}

// DeleteDNS removes the record of name.
func (tx *Tx) DeleteDNS(name string) error { return tx.del(bucketDNS, dnsKey(name)) }

// State returns everything in the store as this transaction sees it. Allocations and Peers
// are in key order. Unknown JSON fields are ignored (a newer release of the same schema
// version may add fields); a value that does not decode, or whose key disagrees with its
// contents, is an error naming the bucket and key.
func (tx *Tx) State() (*State, error) {
	st := &State{
		Services:    map[string]Service{},
		Attachments: map[string]Attachment{},
		DNS:         map[string]DNSRecord{},
	}
	var err error
	if st.Node, err = tx.Node(); err != nil {
		return nil, err
	}
	if st.Global, err = tx.Global(); err != nil {
		return nil, err
	}
	err = forEach(tx, bucketServices, func(s Service) string { return s.Name }, func(s Service) { st.Services[s.Name] = s })
	if err != nil {
		return nil, err
	}
	err = forEach(tx, bucketAllocations, func(a Allocation) string { return allocationKey(a.Pool, a.Addr) },
		func(a Allocation) { st.Allocations = append(st.Allocations, a) })
	if err != nil {
		return nil, err
	}
	err = forEach(tx, bucketAttachments, func(a Attachment) string { return a.Key }, func(a Attachment) { st.Attachments[a.Key] = a })
	if err != nil {
		return nil, err
	}
	err = forEach(tx, bucketPeers, func(p Peer) string { return peerKey(p.Scope, p.PublicKey) }, func(p Peer) { st.Peers = append(st.Peers, p) })
	if err != nil {
		return nil, err
	}
	err = forEach(tx, bucketDNS, func(r DNSRecord) string { return r.Name }, func(r DNSRecord) { st.DNS[r.Name] = r })
	if err != nil {
		return nil, err
	}
	return st, nil
}

// forEach decodes every record of bucket in key order, checks that each record's own key
// fields reproduce the key it is stored under, and hands it to add.
func forEach[T any](tx *Tx, bucket []byte, keyOf func(T) string, add func(T)) error {
	b := tx.btx.Bucket(bucket)
	if b == nil {
		return fmt.Errorf("%w: bucket %q is missing", ErrCorrupt, bucket)
	}
	return b.ForEach(func(k, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return undecodable(bucket, k, err)
		}
		if got := keyOf(v); got != string(k) {
			return fmt.Errorf("%w: bucket %q key %q holds the record of %q", ErrCorrupt, bucket, k, got)
		}
		add(v)
		return nil
	})
}
