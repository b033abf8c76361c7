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
// attach to it) without waiting; responses carry the request id. Different
// connections run in parallel. Events are pushed to every connection through
// a bounded queue; a client that does not read loses events (counted) and
// stalls only itself.
type Server struct {
	Handler Handler
	Log     *slog.Logger
	// Authorize vets a new connection; a non-nil error is sent to the
	// caller as an err frame and the connection is closed.
	Authorize func(net.Conn) error
	// QueueDepth bounds the requests read ahead of execution per
	// connection; the server stops reading from a connection that has this
	// many requests waiting (back-pressure instead of unbounded memory).
	QueueDepth int
	// EventQueue bounds the undelivered events per connection.
	EventQueue int

	mu       sync.Mutex
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
		queue:  make(chan protocol.Frame, max(s.QueueDepth, 1)),
		out:    make(chan protocol.Frame, max(s.QueueDepth, 1)+1),
		events: make(chan protocol.Event, max(s.EventQueue, 1)),
		done:   make(chan struct{}),
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
		for _, c := range conns {
			c.nc.Close()
		}
		<-finished
		return ctx.Err()
	}
}

// serverConn is one client connection: a reader that decodes frames, a
// worker that executes them in order, and a writer that owns the socket's
// write side (responses and events never interleave mid-frame).
type serverConn struct {
	srv    *Server
	nc     net.Conn
	queue  chan protocol.Frame // decoded requests, and err responses for bad ones
	out    chan protocol.Frame // responses ready to write
	events chan protocol.Event
	done   chan struct{} // closed when the writer has finished
	once   sync.Once
}

func (c *serverConn) stopReading() {
	c.once.Do(func() {
		// Unblocks a Read in progress; the reader then ends normally.
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
	go c.writer()
	go c.worker()
	c.reader()
	<-c.done
	c.nc.Close()
}

// reader decodes frames until the peer hangs up, sends garbage or the server
// shuts down, then closes the queue so the worker and writer finish.
func (c *serverConn) reader() {
	defer close(c.queue)
	log := c.srv.logger()
	fr := NewFrameReader(c.nc)
	for {
		body, err := fr.Read()
		if err != nil {
			var tooLarge *FrameTooLargeError
			switch {
			case errors.Is(err, ErrClosed), errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF):
			case isDeadline(err):
				// Shutdown, or the writer found the peer gone.
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
				c.queue <- protocol.ResponseFrame(bad.ID, protocol.Err{Message: bad.Error()})
				continue
			}
			log.Warn("closing connection: undecodable frame", "err", err, "bytes", len(body))
			return
		}
		if f.Kind != protocol.KindRequest {
			log.Warn("ignoring a non-request frame from a client", "kind", f.Kind)
			continue
		}
		c.queue <- f
	}
}

func isDeadline(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// worker executes requests in arrival order.
func (c *serverConn) worker() {
	defer close(c.out)
	ctx := context.Background()
	for f := range c.queue {
		if f.Kind == protocol.KindResponse {
			c.out <- f // an err answer to a bad request, already built
			continue
		}
		c.out <- protocol.ResponseFrame(f.ID, c.handle(ctx, f.Request))
	}
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

// writer writes responses and events until the worker is done, then
// returns. A write error (peer gone) makes it drain and discard the rest so
// the worker never blocks on a dead connection.
func (c *serverConn) writer() {
	defer close(c.done)
	log := c.srv.logger()
	buf := make([]byte, 0, 4096)
	broken := false
	write := func(f protocol.Frame) {
		if broken {
			return
		}
		var err error
		buf, err = AppendFrame(buf[:0], f)
		if err != nil {
			log.Error("cannot encode frame", "err", err)
			if f.Kind == protocol.KindResponse {
				buf, _ = AppendFrame(buf[:0], protocol.ResponseFrame(f.ID, protocol.Err{Message: "response could not be encoded: " + err.Error()}))
			} else {
				return
			}
		}
		if _, err := c.nc.Write(buf); err != nil {
			broken = true
			c.stopReading()
		}
		if cap(buf) > 1<<20 {
			buf = make([]byte, 0, 4096)
		}
	}
	for {
		select {
		case f, ok := <-c.out:
			if !ok {
				return
			}
			write(f)
		case ev := <-c.events:
			write(protocol.EventFrame(ev))
		}
	}
}
