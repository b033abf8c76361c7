package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the state file's name inside the daemon's data directory.
const FileName = "overlayd.db"

// Errors Open and Load wrap, so the daemon can tell its operator which case it hit.
var (
	// ErrLocked: another process holds the file's lock.
	ErrLocked = errors.New("state file is in use")
	// ErrNewerSchema: the file was written by a newer release.
	ErrNewerSchema = errors.New("state file has a newer schema")
	// ErrCorrupt: the file is not a readable zlayer-overlayd state file.
	ErrCorrupt = errors.New("state file is corrupt")
)

// Options tune Open.
type Options struct {
	// Timeout bounds the wait for the file lock; bbolt would otherwise wait forever when
	// another process holds it. Default 1s.
	Timeout time.Duration
	// Logger receives warnings, such as a permission fix. Default slog.Default().
	Logger *slog.Logger
	// NoSync skips fsync on commit. Only for tests and benchmarks: an Update that returned
	// nil may be lost on power failure.
	NoSync bool
}

// Store is the open state file. Its methods are safe for concurrent use.
type Store struct {
	db   *bolt.DB
	path string
	log  *slog.Logger

	// Group commit: Update calls queue here, and whoever holds commitMu commits every
	// queued call in one bbolt transaction (one fsync).
	queueMu  sync.Mutex
	queue    []*pendingUpdate
	commitMu sync.Mutex
}

// Open opens the state file at path, creating it (mode 0600, parent directories 0700) when
// it does not exist.
//
// An existing file is refused, and left exactly as it was, when it is empty, not a bbolt
// database, truncated, has corrupt pages, is not a zlayer-overlayd state file, or has a
// schema version newer than SchemaVersion: overwriting it would lose the node's desired
// state and private keys, so the operator decides. An older schema is migrated in one
// transaction.
//
// A file readable or writable by group or others is accepted and chmod-ed to 0600 with a
// warning: it holds private keys, and refusing to start over a permission bit would keep
// the node's overlay down for no gain, while tightening loses nothing. (A refused file is not
// chmod-ed either: Open changes nothing about a file it refuses.)
func Open(path string, opts Options) (*Store, error) {
	return open(path, opts, currentSchema)
}

func open(path string, opts Options, sc schema) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}

	newDirs, err := mkdirPrivate(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	existed, err := checkExisting(path)
	if err != nil {
		return nil, err
	}

	db, file, err := openBolt(path, opts)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: path, log: opts.Logger}
	if err := s.prepare(sc, existed); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := s.tightenMode(file); err != nil {
		_ = db.Close()
		return nil, err
	}
	if !existed {
		// bbolt fsyncs the file, not the directory entry naming it: without this a power
		// loss right after the first start could leave no file at all.
		for _, dir := range append([]string{filepath.Dir(path)}, newDirs...) {
			if err := syncDir(dir); err != nil {
				_ = db.Close()
				return nil, fmt.Errorf("store: syncing directory %s after creating %s: %w", dir, path, err)
			}
		}
	}
	return s, nil
}

func refuse(path string, reason error) error {
	return fmt.Errorf("%w: refusing to use %s: %w. It was left untouched; move it aside (or restore it from a backup) and start zlayer-overlayd again",
		ErrCorrupt, path, reason)
}

// mkdirPrivate creates dir and any missing parents with mode 0700. It returns the parents
// of every directory it created, which need an fsync for the new entries to be durable.
func mkdirPrivate(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || filepath.Dir(d) == d {
			break
		}
		missing = append(missing, d)
	}
	if len(missing) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: creating data directory %s: %w", dir, err)
	}
	parents := make([]string, 0, len(missing))
	for _, d := range missing {
		parents = append(parents, filepath.Dir(d))
	}
	return parents, nil
}

// checkExisting reports whether path exists, and refuses it unless it is a complete bbolt file.
func checkExisting(path string) (bool, error) {
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: cannot inspect state file %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return true, refuse(path, fmt.Errorf("it is not a regular file (mode %s)", info.Mode()))
	}
	f, err := os.Open(path)
	if err != nil {
		return true, fmt.Errorf("store: cannot read state file %s: %w", path, err)
	}
	defer f.Close()
	if err := checkBoltHeader(f, info.Size()); err != nil {
		return true, refuse(path, err)
	}
	return true, nil
}

// openBolt opens path with bbolt, turning its lock timeout and its panics on damaged files
// into errors. It also returns bbolt's *os.File, for fchmod.
func openBolt(path string, opts Options) (db *bolt.DB, file *os.File, err error) {
	bopts := &bolt.Options{
		Timeout:    opts.Timeout,
		NoSync:     opts.NoSync,
		NoGrowSync: opts.NoSync,
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, mode)
			file = f
			return f, err
		},
	}
	// checkBoltHeader rules out the damage we know makes bbolt fault or panic; this catches
	// the rest (garbage inside an otherwise well-formed file) and releases the lock bbolt
	// took, which it cannot do itself once it has panicked.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if file != nil {
				_ = file.Close()
			}
			db, file, err = nil, nil, refuse(path, fmt.Errorf("bbolt could not read it: %v", r))
		}
	}()
	db, err = bolt.Open(path, 0o600, bopts)
	switch {
	case err == nil:
		return db, file, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, nil, fmt.Errorf("%w: another zlayer-overlayd is using %s (it holds the file's lock; waited %s). Stop it, or give this one another data directory",
			ErrLocked, path, opts.Timeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, nil, refuse(path, fmt.Errorf("bbolt cannot read it: %w", err))
	default:
		return nil, nil, fmt.Errorf("store: opening state file %s: %w", path, err)
	}
}

// prepare checks the file's integrity and schema, lays out a new file, migrates an old one and
// creates the node record. It writes nothing to a file it refuses.
func (s *Store) prepare(sc schema, existed bool) error {
	var version int
	var hasNode bool
	err := s.db.View(func(btx *bolt.Tx) error {
		if existed {
			// A full page walk: a few ms for thousands of records, and it turns silent
			// page damage into a refusal at start instead of a panic mid-request.
			// The channel must be drained: Check's goroutine reads the transaction until
			// it closes the channel.
			var damage error
			for err := range btx.Check() {
				if damage == nil {
					damage = err
				}
			}
			if damage != nil {
				return refuse(s.path, fmt.Errorf("its pages are damaged: %w", damage))
			}
		}
		v, err := readSchemaVersion(btx)
		if err != nil {
			return refuse(s.path, err)
		}
		if v > sc.Version {
			return fmt.Errorf("%w: refusing to use %s: it has schema version %d, and this zlayer-overlayd knows versions up to %d, so a newer release wrote it. Run that release (or newer), or move the file aside to start from empty state; it was left untouched",
				ErrNewerSchema, s.path, v, sc.Version)
		}
		version = v
		if meta := btx.Bucket(bucketMeta); meta != nil {
			hasNode = meta.Get(keyNode) != nil
		}
		return nil
	})
	if err != nil || (version == sc.Version && hasNode) {
		return err
	}
	return s.db.Update(func(btx *bolt.Tx) error {
		if err := sc.upgrade(btx, version); err != nil {
			return fmt.Errorf("store: preparing %s: %w", s.path, err)
		}
		if hasNode {
			return nil
		}
		id := make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return fmt.Errorf("store: generating the node identity: %w", err)
		}
		tx := &Tx{btx: btx, writable: true}
		return tx.PutNode(Node{Identity: hex.EncodeToString(id), CreatedUnix: time.Now().Unix()})
	})
}

// Path is the absolute path of the state file.
func (s *Store) Path() string { return s.path }

// Close waits for running transactions, then releases the file and its lock.
func (s *Store) Close() error { return s.db.Close() }

// Load returns everything in the store (see Tx.State).
func (s *Store) Load() (*State, error) {
	var st *State
	err := s.View(func(tx *Tx) (err error) {
		st, err = tx.State()
		return err
	})
	return st, err
}

// View runs fn in a read-only transaction. Many may run at once, and alongside an Update.
func (s *Store) View(fn func(tx *Tx) error) error {
	err := s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{btx: btx}) })
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("store: %s is closed: %w", s.path, err)
	}
	return err
}
