// Package store keeps zlayer-overlayd's desired state in one bbolt file,
// <data-dir>/overlayd.db, mode 0600.
//
// The stored state is the truth: at start the daemon loads it and reconciles the kernel to
// it, and a mutating request is answered ok only after Update has returned nil, which means
// the change is fsync-ed. Records are JSON values, one key per entity, in one bucket per kind;
// the file carries a schema version (SchemaVersion) and is migrated forward, never backward.
//
// Open is deliberately conservative with an existing file: anything it cannot read completely
// (empty, not bbolt, truncated, damaged pages, foreign, or newer schema) is refused with an
// error naming the file, and not modified in any way. The one change it makes unasked is
// tightening a group- or world-accessible file to 0600, with a warning.
//
// Concurrency: bbolt allows one writer at a time. Update queues its caller and commits every
// queued caller in one transaction and one fsync (group commit); see Update for the exact
// guarantees. View and Load run in parallel with each other and with Update.
package store
