package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Handler executes one request. It must always return a response (an
// protocol.Err on failure) and must not panic; the server still recovers a
// panic into an err response so one bad request never takes a connection,
// let alone the daemon, down.
type Handler interface {
	Handle(ctx context.Context, req protocol.Request) protocol.Response
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req protocol.Request) protocol.Response

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, req protocol.Request) protocol.Response {
	return f(ctx, req)
}

// Server serves the protocol on a listener.
//
// Requests of one connection are executed one at a time, in the order they
// arrive, so a client may pipeline dependent requests (setup a service, then
// attach to it) without waiting; responses carry the request id. Pipelined
// requests wait in the socket's buffer while one executes, which is also
// the back-pressure on a client that sends faster than it is served.
// Different connections run in parallel. Events are pushed to every connection through
// a bounded queue; a client that does not read loses events (counted) and
// stalls only itself.
type Server struct {
	Handler Handler
	Log     *slog.Logger
	// Authorize vets a new connection; a non-nil error is sent to the
	// caller as an err frame and the connection is closed.
	Authorize func(net.Conn) error
	// ConnContext, when set, derives the context of every request of a
	// new (authorized) connection, once per connection: the daemon marks
	// there who is calling, for the few ops that care (backup).
	ConnContext func(ctx context.Context, c net.Conn) context.Context
	// EventQueue bounds the undelivered events per connection.
	EventQueue int
	// WriteTimeout bounds the wait for a client to take one frame (default
	// 10 s). A client that does not read its answers or events for that
	// long is disconnected, so it holds no goroutine or socket for ever.
	WriteTimeout time.Duration

	mu       sync.Mutex
	base     context.Context // the requests' context, canceled when Shutdown gives up waiting
	cancel   context.CancelFunc
	conns    map[*serverConn]struct{}
	lns      []net.Listener
	closing  bool
	wg       sync.WaitGroup
	dropped  atomic.Uint64
	accepted atomic.Uint64
}

// EventsDropped is how many events were discarded because a client's queue
// was full.
func (s *Server) EventsDropped() uint64 { return s.dropped.Load() }

// Connections is the number of open client connections.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// Serve accepts connections on ln until Shutdown. It returns nil after
// Shutdown, or the accept error that stopped it.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	if s.conns == nil {
		s.conns = map[*serverConn]struct{}{}
		s.base, s.cancel = context.WithCancel(context.Background())
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			// Running out of file descriptors is temporary; anything
			// else ends the listener.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		s.accepted.Add(1)
		if !s.track(nc) {
			nc.Close()
			return nil
		}
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) track(nc net.Conn) bool {
	c := &serverConn{
		srv:    s,
		nc:     nc,
		events: make(chan protocol.Event, max(s.EventQueue, 1)),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
		wbuf:   make([]byte, 0, 4096),
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go c.run()
	return true
}

func (s *Server) untrack(c *serverConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Broadcast queues ev for every connected client without blocking.
func (s *Server) Broadcast(ev protocol.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		select {
		case c.events <- ev:
		default:
			s.dropped.Add(1)
		}
	}
}

// Shutdown stops accepting, lets every connection finish the requests it
// has already read and flush their responses, then closes the connections.
// Requests still arriving are not read. It waits until ctx is done at most.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	lns := s.lns
	s.lns = nil
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, c := range conns {
		c.stopReading()
	}
	finished := make(chan struct{})
	go func() { s.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		// Requests still running are told to give up, and their clients
		// are cut off.
		s.mu.Lock()
		if s.cancel != nil {
			s.cancel()
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.nc.Close()
		}
		<-finished
		return ctx.Err()
	}
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout > 0 {
		return s.WriteTimeout
	}
	return 10 * time.Second
}

// serverConn is one client connection. Its goroutine reads a frame,
// executes it and writes the answer before reading the next, so requests of
// one connection run in arrival order with no hand-off between goroutines
// (each hand-off costs a scheduler wake-up, which was most of a status
// round trip). A second goroutine writes pushed events; both write whole
// frames under wmu, so frames never interleave.
type serverConn struct {
	srv    *Server
	nc     net.Conn
	events chan protocol.Event
	quit   chan struct{} // closed when the request loop has ended
	done   chan struct{} // closed when the event writer has ended
	once   sync.Once

	wmu    sync.Mutex // serialises writes; guards wbuf and broken
	wbuf   []byte
	broken bool
	// deadlineSet is when the write deadline was last moved.
	deadlineSet time.Time
}

func (c *serverConn) stopReading() {
	c.once.Do(func() {
		// Unblocks a Read in progress; the loop then ends normally.
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	})
}

func (c *serverConn) run() {
	defer c.srv.untrack(c)
	log := c.srv.logger()
	if c.srv.Authorize != nil {
		if err := c.srv.Authorize(c.nc); err != nil {
			log.Warn("refused connection", "err", err)
			_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
			_ = WriteFrame(c.nc, protocol.ResponseFrame(0, protocol.Err{Message: err.Error()}))
			c.nc.Close()
			return
		}
	}
	go c.eventWriter()
	c.serve()
	close(c.quit)
	<-c.done
	c.nc.Close()
}

// serve reads, executes and answers requests until the peer hangs up,
// sends garbage, a write fails or the server shuts down.
func (c *serverConn) serve() {
	log := c.srv.logger()
	fr := NewFrameReader(c.nc)
	c.srv.mu.Lock()
	ctx := c.srv.base
	c.srv.mu.Unlock()
	if c.srv.ConnContext != nil {
		ctx = c.srv.ConnContext(ctx, c.nc)
	}
	for {
		body, err := fr.Read()
		if err != nil {
			var tooLarge *FrameTooLargeError
			switch {
			case errors.Is(err, ErrClosed), errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF):
			case isDeadline(err):
				// Shutdown, or a write found the peer gone.
			case errors.As(err, &tooLarge):
				log.Warn("closing connection: "+err.Error(), "remote", c.nc.RemoteAddr())
			default:
				log.Warn("closing connection: read failed", "err", err)
			}
			return
		}
		f, err := protocol.UnmarshalFrame(body)
		if err != nil {
			var bad *protocol.BadRequestError
			if errors.As(err, &bad) {
				log.Debug("bad request", "id", bad.ID, "err", bad)
				c.write(protocol.ResponseFrame(bad.ID, protocol.Err{Message: bad.Error()}))
				continue
			}
			log.Warn("closing connection: undecodable frame", "err", err, "bytes", len(body))
			return
		}
		if f.Kind != protocol.KindRequest {
			log.Warn("ignoring a non-request frame from a client", "kind", f.Kind)
			continue
		}
		c.write(protocol.ResponseFrame(f.ID, c.handle(ctx, f.Request)))
	}
}

func isDeadline(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (c *serverConn) handle(ctx context.Context, req protocol.Request) (resp protocol.Response) {
	defer func() {
		if r := recover(); r != nil {
			c.srv.logger().Error("request panicked", "op", req.Op(), "panic", r)
			resp = protocol.Err{Message: fmt.Sprintf("%s: internal error (%v); the daemon is still running, please report this", req.Op(), r)}
		}
	}()
	return c.srv.Handler.Handle(ctx, req)
}

// write encodes and writes one frame. After a write error (peer gone) it
// discards everything and stops the request loop, so nothing ever blocks
// on a dead connection.
func (c *serverConn) write(f protocol.Frame) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken {
		return
	}
	var err error
	c.wbuf, err = AppendFrame(c.wbuf[:0], f)
	if err != nil {
		c.srv.logger().Error("cannot encode frame", "err", err)
		if f.Kind != protocol.KindResponse {
			return
		}
		c.wbuf, _ = AppendFrame(c.wbuf[:0], protocol.ResponseFrame(f.ID, protocol.Err{Message: "response could not be encoded: " + err.Error()}))
	}
	c.refreshWriteDeadline()
	if _, err := c.nc.Write(c.wbuf); err != nil {
		if isDeadline(err) {
			c.srv.logger().Warn("closing connection: the client did not take a frame within the write timeout", "timeout", c.srv.writeTimeout())
		}
		c.broken = true
		c.stopReading()
		c.nc.Close()
	}
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = make([]byte, 0, 4096)
	}
}

// refreshWriteDeadline moves the write deadline to a full WriteTimeout
// ahead, unless it was moved less than an eighth of that ago: setting it
// costs a timer change, which on a busy connection was one per answer. A
// frame so gets between 7/8 of WriteTimeout and all of it. Called with wmu
// held.
func (c *serverConn) refreshWriteDeadline() {
	timeout := c.srv.writeTimeout()
	now := time.Now()
	if now.Sub(c.deadlineSet) < timeout/8 {
		return
	}
	c.deadlineSet = now
	_ = c.nc.SetWriteDeadline(now.Add(timeout))
}

// eventWriter writes pushed events until the request loop has ended.
func (c *serverConn) eventWriter() {
	defer close(c.done)
	for {
		select {
		case ev := <-c.events:
			c.write(protocol.EventFrame(ev))
		case <-c.quit:
			return
		}
	}
}
