package enginetest

import (
	"fmt"
	"io/fs"
	"sync"
	"time"
)

type process struct{ start, netns uint64 }

// Procs is the host's process table: container processes by PID. It
// implements the engine's Processes.
type Procs struct {
	mu    sync.Mutex
	procs map[int]process
	// netns are the network namespace files (ip netns add, a CNI
	// runtime's) by path, with their inodes.
	netns map[string]uint64
	last  uint64
	// onStart, when set, runs at the start of every StartTime call.
	onStart func(pid int)
}

// NewProcs returns a process table without processes.
func NewProcs() *Procs { return &Procs{procs: map[int]process{}, netns: map[string]uint64{}} }

// Add starts a process with the given PID. Its start time is later than
// that of every process added before, so a PID reused after Kill is a
// different process to the engine.
func (p *Procs) Add(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = max(p.last+1, uint64(time.Now().UnixNano()))
	p.procs[pid] = process{start: p.last, netns: uint64(4026530000 + pid)}
}

// Kill ends the process with the given PID.
func (p *Procs) Kill(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.procs, pid)
}

// OnStart makes every StartTime call run hook first (nil ends it), so a
// test can act between the engine's looks at a process, e.g. make it exit
// in the middle of an attach. hook runs without the table locked.
func (p *Procs) OnStart(hook func(pid int)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onStart = hook
}

func (p *Procs) lookup(pid int) (process, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.procs[pid]
	if !ok {
		return process{}, fmt.Errorf("process %d: %w", pid, fs.ErrNotExist)
	}
	return id, nil
}

func (p *Procs) StartTime(pid int) (uint64, error) {
	p.mu.Lock()
	hook := p.onStart
	p.mu.Unlock()
	if hook != nil {
		hook(pid)
	}
	id, err := p.lookup(pid)
	return id.start, err
}

func (p *Procs) NetnsInode(pid int) (uint64, error) {
	id, err := p.lookup(pid)
	return id.netns, err
}

// AddNetns creates a network namespace file at path (replacing one that is
// there) and returns its inode, which no namespace had before.
func (p *Procs) AddNetns(path string) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = max(p.last+1, uint64(time.Now().UnixNano()))
	p.netns[path] = p.last
	return p.last
}

// DeleteNetns removes the namespace file at path.
func (p *Procs) DeleteNetns(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.netns, path)
}

// NetnsFileInode is the engine's view of a namespace file: its inode, or an
// error wrapping fs.ErrNotExist, as linuxnet.NetnsFileInode answers.
func (p *Procs) NetnsFileInode(path string) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ino, ok := p.netns[path]
	if !ok {
		return 0, fmt.Errorf("network namespace %s: %w", path, fs.ErrNotExist)
	}
	return ino, nil
}
