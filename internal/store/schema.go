package store

import (
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the bucket and record layout this binary reads and writes. A file with a
// higher version was written by a newer release and is refused, never downgraded.
//
// To change the layout: increment SchemaVersion and append a migration to currentSchema
// whose From is the previous version. Open runs every missing step, in order, inside one
// read-write transaction, so a file is either fully migrated or untouched.
const SchemaVersion = 1

var (
	bucketMeta        = []byte("meta")
	bucketServices    = []byte("services")
	bucketAllocations = []byte("allocations")
	bucketAttachments = []byte("attachments")
	bucketPeers       = []byte("peers")
	bucketDNS         = []byte("dns")

	keySchemaVersion = []byte("schema_version")
	keyNode          = []byte("node")
	keyGlobal        = []byte("global")
)

// migration upgrades a file from version From to From+1.
type migration struct {
	From  int
	Apply func(tx *bolt.Tx) error
}

// schema is what Open brings a file to. It is a value rather than package state so tests can
// open files with a pretend newer schema and prove the migration machinery works.
type schema struct {
	Version    int
	Migrations []migration
}

var currentSchema = schema{Version: SchemaVersion}

// createV1 lays out an empty version-1 file. New files are created at version 1 and then
// migrated like any old file, so there is one path to every layout.
func createV1(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketMeta, bucketServices, bucketAllocations, bucketAttachments, bucketPeers, bucketDNS} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("creating bucket %q: %w", name, err)
		}
	}
	return putSchemaVersion(tx, 1)
}

func putSchemaVersion(tx *bolt.Tx, v int) error {
	return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(v)))
}

// readSchemaVersion returns the file's version, or 0 when the file has no buckets at all:
// that is a file bbolt initialised but we never got to lay out (a crash between the two),
// which is safe to treat as new.
func readSchemaVersion(tx *bolt.Tx) (int, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		if k, _ := tx.Cursor().First(); k != nil {
			return 0, fmt.Errorf("it is a bbolt database but not a zlayer-overlayd state file (it has bucket %q and no %q bucket)", k, bucketMeta)
		}
		return 0, nil
	}
	raw := meta.Get(keySchemaVersion)
	v, err := strconv.Atoi(string(raw))
	if err != nil || v < 1 {
		return 0, fmt.Errorf("its schema version %q is not a positive integer", raw)
	}
	return v, nil
}

// upgrade brings tx from version `from` (0 = empty file) to sc.Version.
func (sc schema) upgrade(tx *bolt.Tx, from int) error {
	if from == 0 {
		if err := createV1(tx); err != nil {
			return err
		}
		from = 1
	}
	for v := from; v < sc.Version; v++ {
		step := sc.find(v)
		if step == nil {
			return fmt.Errorf("this binary has no migration from schema version %d to %d", v, v+1)
		}
		if err := step.Apply(tx); err != nil {
			return fmt.Errorf("migrating schema version %d to %d: %w", v, v+1, err)
		}
		if err := putSchemaVersion(tx, v+1); err != nil {
			return err
		}
	}
	return nil
}

func (sc schema) find(from int) *migration {
	for i := range sc.Migrations {
		if sc.Migrations[i].From == from {
			return &sc.Migrations[i]
		}
	}
	return nil
}
