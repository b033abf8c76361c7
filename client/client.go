// Package client is a Go client for zlayer-overlayd: request ids, context
// deadlines, pipelining (many requests in flight on one connection, answers
// matched by id), automatic reconnection with bounded backoff, and a channel
// of the events the daemon pushes.
//
//	c, err := client.Dial(ctx, client.DefaultSocket())
//	resp, err := c.Call(ctx, protocol.Status{})
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/paths"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// DefaultSocket is the socket the daemon listens on by default, following
// the same rules as the ZLayer main daemon ($ZLAYER_DATA_DIR included).
func DefaultSocket() string { return SocketFor(paths.DefaultDataDir()) }

// SocketFor is the default socket of a daemon started with --data-dir dir.
// For a data directory too long for a socket path the daemon's choice
// depends on its uid (docs/protocol.md); the first such path that exists
// is returned.
func SocketFor(dataDir string) string {
	candidates := paths.SocketCandidates(dataDir)
	for _, p := range candidates {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return p
		}
	}
	return candidates[0]
}

// Backoff bounds of reconnection attempts: 100 ms, doubling, capped at 1 s,
// the schedule the reference client uses.
const (
	MinBackoff = 100 * time.Millisecond
	MaxBackoff = time.Second
)

// ErrClosed is returned by requests on a closed Client.
var ErrClosed = errors.New("client closed")

// ConnectionLostError means the connection broke while a request was in
// flight: the daemon may or may not have executed it.
type ConnectionLostError struct {
	Op  string
	Err error
}

func (e *ConnectionLostError) Error() string {
	return fmt.Sprintf("%s: connection to zlayer-overlayd lost while waiting for the answer (the request may have been executed): %v", e.Op, e.Err)
}

func (e *ConnectionLostError) Unwrap() error { return e.Err }

// Options tune a Client; the zero value is usable.
type Options struct {
	// DialTimeout bounds one connection attempt (default 1 s).
	DialTimeout time.Duration
	// EventBuffer is the capacity of the Events channel (default 256);
	// events beyond it are dropped and counted, never blocking the reader.
	EventBuffer int
	Logger      *slog.Logger
}

// Client is safe for concurrent use.
type Client struct {
	socket string
	opts   Options
	log    *slog.Logger

	nextID  atomic.Uint64
	events  chan protocol.Event
	dropped atomic.Uint64

	mu      sync.Mutex
	cur     *conn
	ready   chan struct{} // closed while cur is usable
	lastErr error         // why the last attempt or connection failed
	closed  bool
	closeCh chan struct{}
	loopWG  sync.WaitGroup
}

// Dial connects to the daemon at socket, retrying with backoff until ctx is
// done. The client keeps reconnecting in the background after a connection
// breaks, until Close.
func Dial(ctx context.Context, socket string, opts ...Options) (*Client, error) {
	c := New(socket, opts...)
	if _, err := c.conn(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// New returns a client that connects in the background; requests wait for
// the connection (bounded by their context).
func New(socket string, opts ...Options) *Client {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = time.Second
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = 256
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		socket:  socket,
		opts:    o,
		log:     log,
		events:  make(chan protocol.Event, o.EventBuffer),
		ready:   make(chan struct{}),
		closeCh: make(chan struct{}),
	}
	c.loopWG.Add(1)
	go c.loop()
	return c
}

// Events delivers the events the daemon pushes, across reconnections. It is
// closed by Close.
func (c *Client) Events() <-chan protocol.Event { return c.events }

// EventsDropped counts events discarded because Events was not drained.
func (c *Client) EventsDropped() uint64 { return c.dropped.Load() }

// Close ends the connection and the reconnect loop; requests in flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closeCh)
	cur := c.cur
	c.mu.Unlock()
	if cur != nil {
		cur.nc.Close()
	}
	c.loopWG.Wait()
	close(c.events)
	return nil
}

// Call sends req and waits for its answer. An err response is returned as
// a protocol.Err error; transport failures as other errors.
func (c *Client) Call(ctx context.Context, req protocol.Request) (protocol.Response, error) {
	resp, err := c.Do(ctx, req)
	if err != nil {
		return nil, err
	}
	if e, ok := resp.(protocol.Err); ok {
		return nil, e
	}
	return resp, nil
}

// Status is Call(protocol.Status{}) with the snapshot unwrapped.
func (c *Client) Status(ctx context.Context) (protocol.StatusSnapshot, error) {
	resp, err := c.Call(ctx, protocol.Status{})
	if err != nil {
		return protocol.StatusSnapshot{}, err
	}
	s, ok := resp.(protocol.StatusResult)
	if !ok {
		return protocol.StatusSnapshot{}, fmt.Errorf("status: unexpected %q response", resp.Result())
	}
	return s.StatusSnapshot, nil
}

// Do sends req and returns whatever the daemon answered, err responses
// included. It fails without sending when no connection comes up before ctx
// is done.
func (c *Client) Do(ctx context.Context, req protocol.Request) (protocol.Response, error) {
	for {
		cc, err := c.conn(ctx)
		if err != nil {
			return nil, err
		}
		id := c.nextID.Add(1)
		ch := make(chan protocol.Response, 1)
		if !cc.register(id, ch) {
			continue // died between conn() and register: nothing was sent
		}
		if err := cc.write(ctx, protocol.RequestFrame(id, req)); err != nil {
			cc.unregister(id)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%s: %w", req.Op(), ctx.Err())
			}
			// The daemon executes only whole frames, so a failed write was
			// never executed: wait for the reconnect and send it again.
			select {
			case <-cc.dead:
			case <-ctx.Done():
				return nil, fmt.Errorf("%s: %w", req.Op(), ctx.Err())
			}
			continue
		}
		select {
		case resp := <-ch:
			return resp, nil
		case <-cc.dead:
			// The answer may have raced the failure.
			select {
			case resp := <-ch:
				return resp, nil
			default:
			}
			return nil, &ConnectionLostError{Op: req.Op(), Err: cc.failure()}
		case <-ctx.Done():
			cc.unregister(id)
			return nil, fmt.Errorf("%s: %w", req.Op(), ctx.Err())
		}
	}
}

// DoRaw sends a request object given as raw JSON (it need not be one this
// package can decode — overlayctl call uses it to send anything) and returns
// the daemon's answer.
func (c *Client) DoRaw(ctx context.Context, request []byte) (protocol.Response, error) {
	if !json.Valid(request) {
		return nil, errors.New("request is not valid JSON")
	}
	return c.Do(ctx, protocol.RawRequest(request))
}

// conn waits for a usable connection.
func (c *Client) conn(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		cur, ready := c.cur, c.ready
		c.mu.Unlock()
		if cur != nil {
			return cur, nil
		}
		select {
		case <-ready:
		case <-c.closeCh:
			return nil, ErrClosed
		case <-ctx.Done():
			c.mu.Lock()
			last := c.lastErr
			c.mu.Unlock()
			if last != nil {
				return nil, fmt.Errorf("zlayer-overlayd not reachable at %s: %w (last attempt: %v)", c.socket, ctx.Err(), last)
			}
			return nil, fmt.Errorf("zlayer-overlayd not reachable at %s: %w", c.socket, ctx.Err())
		}
	}
}

// loop keeps one connection up until Close.
func (c *Client) loop() {
	defer c.loopWG.Done()
	backoff := MinBackoff
	for {
		select {
		case <-c.closeCh:
			return
		default:
		}
		nc, err := ipc.Dial(c.socket, c.opts.DialTimeout)
		if err != nil {
			c.setLastErr(err)
			c.log.Debug("connect failed", "socket", c.socket, "err", err, "retry_in", backoff)
			select {
			case <-c.closeCh:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, MaxBackoff)
			continue
		}
		cc := &conn{client: c, nc: nc, pending: map[uint64]chan protocol.Response{}, dead: make(chan struct{})}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			nc.Close()
			return
		}
		c.cur = cc
		close(c.ready)
		c.mu.Unlock()

		start := time.Now()
		cc.readLoop()

		c.mu.Lock()
		c.cur = nil
		c.ready = make(chan struct{})
		c.lastErr = cc.failure()
		c.mu.Unlock()
		// A connection that lived a while resets the schedule; one that was
		// refused at once (e.g. permission denied) keeps backing off.
		if time.Since(start) > MaxBackoff {
			backoff = MinBackoff
		} else {
			select {
			case <-c.closeCh:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, MaxBackoff)
		}
	}
}

func (c *Client) setLastErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

// conn is one connection: writers serialise on wmu, the read loop owns the
// read side and dispatches answers by id.
type conn struct {
	client *Client
	nc     net.Conn
	wmu    sync.Mutex
	wbuf   []byte

	mu      sync.Mutex
	pending map[uint64]chan protocol.Response
	err     error
	dead    chan struct{}
}

func (cc *conn) register(id uint64, ch chan protocol.Response) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return false
	}
	cc.pending[id] = ch
	return true
}

func (cc *conn) unregister(id uint64) {
	cc.mu.Lock()
	delete(cc.pending, id)
	cc.mu.Unlock()
}

func (cc *conn) failure() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

func (cc *conn) write(ctx context.Context, f protocol.Frame) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	var err error
	cc.wbuf, err = ipc.AppendFrame(cc.wbuf[:0], f)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = cc.nc.SetWriteDeadline(dl)
	} else {
		_ = cc.nc.SetWriteDeadline(time.Time{})
	}
	if _, err := cc.nc.Write(cc.wbuf); err != nil {
		cc.dropAfterWriteFailure()
		return err
	}
	if cap(cc.wbuf) > 1<<20 {
		cc.wbuf = nil
	}
	return nil
}

// drainAfterWriteFailure bounds how long the read loop may still read
// after a failed write.
const drainAfterWriteFailure = time.Second

// dropAfterWriteFailure ends the connection after a failed write: a
// partial frame would desynchronise the stream. Only the write side is shut
// at once, because a write usually fails when the daemon hung up, and what
// it sent before that, its reason for refusing the connection above all,
// is still to be read; the read loop ends at the daemon's EOF or after
// drainAfterWriteFailure.
func (cc *conn) dropAfterWriteFailure() {
	hw, ok := cc.nc.(interface{ CloseWrite() error })
	if !ok || hw.CloseWrite() != nil {
		cc.nc.Close()
		return
	}
	_ = cc.nc.SetReadDeadline(time.Now().Add(drainAfterWriteFailure))
}

func (cc *conn) readLoop() {
	err := cc.read()
	cc.nc.Close()
	cc.mu.Lock()
	cc.err = err
	cc.pending = nil
	cc.mu.Unlock()
	close(cc.dead)
}

func (cc *conn) read() error {
	c := cc.client
	fr := ipc.NewFrameReader(cc.nc)
	for {
		body, err := fr.Read()
		if err != nil {
			return err
		}
		f, err := protocol.UnmarshalFrame(body)
		if err != nil {
			return fmt.Errorf("undecodable frame from zlayer-overlayd: %w", err)
		}
		switch f.Kind {
		case protocol.KindResponse:
			cc.mu.Lock()
			ch, ok := cc.pending[f.ID]
			delete(cc.pending, f.ID)
			cc.mu.Unlock()
			if ok {
				ch <- f.Response
				continue
			}
			if e, isErr := f.Response.(protocol.Err); isErr && f.ID == 0 {
				// The daemon refused the connection (id 0 answers no
				// request); keep its reason as the failure.
				return fmt.Errorf("zlayer-overlayd refused the connection: %s", e.Message)
			}
			c.log.Debug("answer to an abandoned request", "id", f.ID)
		case protocol.KindEvent:
			select {
			case c.events <- f.Event:
			default:
				c.dropped.Add(1)
			}
		default:
			return fmt.Errorf("zlayer-overlayd sent a %s frame to a client", f.Kind)
		}
	}
}
