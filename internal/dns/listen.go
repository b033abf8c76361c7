package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

const (
	// udpReadSize is the largest query datagram we read (the size
	// miekg/dns's server read before): queries are small but EDNS options
	// can push them past 512 bytes.
	udpReadSize = 4096
	// drainTimeout bounds how long removing a listener waits for queries
	// it is still answering (forwards can take seconds); after that its
	// sockets are closed anyway and those answers are lost.
	drainTimeout = 250 * time.Millisecond
	// bindAttempts is how often an ephemeral port is retried when the UDP
	// port we got is already taken for TCP.
	bindAttempts = 8
)

// listener serves UDP and TCP on one address.
type listener struct {
	want netip.AddrPort // as requested (port may be 0)
	addr netip.AddrPort // as bound
	udp  *udpServer
	tcp  *dns.Server
	done sync.WaitGroup // readers, upstream jobs and the TCP server
}

func (l *listener) matches(a netip.AddrPort) bool { return a == l.want || a == l.addr }

// SetListeners makes the server listen on exactly these addresses, UDP and
// TCP on each. Listeners already running on a kept address are not
// touched, so they never miss a query; removed ones are stopped, new ones
// started. Wildcard addresses are refused (the whole call then changes
// nothing). An address that cannot be bound is reported in the error,
// naming it, while the others are served. Port 0 picks a free port, the
// same for UDP and TCP; see Listeners.
func (s *Server) SetListeners(addrs []netip.AddrPort) error {
	want := make([]netip.AddrPort, 0, len(addrs))
	for _, a := range addrs {
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		switch {
		case !a.Addr().IsValid():
			return errors.New("dns: a listener address is not set")
		case a.Addr().IsUnspecified():
			return fmt.Errorf("dns: refusing to listen on wildcard address %v: the resolver would be open on every interface; list each address to serve on (loopback, bridge or overlay gateway)", a)
		}
		if !slices.Contains(want, a) {
			want = append(want, a)
		}
	}

	s.lmu.Lock()
	defer s.lmu.Unlock()
	if s.closed {
		return errors.New("dns: server is closed")
	}
	var kept []*listener
	var errs []error
	for _, l := range s.listeners {
		if slices.ContainsFunc(want, l.matches) {
			kept = append(kept, l)
			continue
		}
		l.stop(drainTimeout)
		s.log.Info("dns: stopped listening", "addr", l.addr)
	}
	for _, a := range want {
		if slices.ContainsFunc(kept, func(l *listener) bool { return l.matches(a) }) {
			continue
		}
		l, err := s.listen(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("dns: listening", "addr", l.addr)
		kept = append(kept, l)
	}
	s.listeners = kept
	s.setGlue()
	return errors.Join(errs...)
}

// Listeners returns the addresses being served, with the ports bound.
func (s *Server) Listeners() []netip.AddrPort {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	out := make([]netip.AddrPort, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.addr
	}
	return out
}

// setGlue publishes our listener addresses as the address of ns.<zone>,
// preferring addresses other nodes and containers can reach over
// loopback. s.lmu must be held.
func (s *Server) setGlue() {
	var glue, loop []netip.Addr
	for _, l := range s.listeners {
		a := l.addr.Addr().WithZone("")
		switch {
		case a.IsLoopback():
			if !slices.Contains(loop, a) {
				loop = append(loop, a)
			}
		case !slices.Contains(glue, a):
			glue = append(glue, a)
		}
	}
	if len(glue) == 0 {
		glue = loop
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(glue, s.zone.glue) {
		return
	}
	s.zone.glue = glue
	s.snap.Store(s.zone.publish(map[string]struct{}{s.zone.fqdn("ns"): {}}))
}

// listen binds UDP and TCP on a and starts serving them.
func (s *Server) listen(a netip.AddrPort) (*listener, error) {
	for attempt := 1; ; attempt++ {
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		if err != nil {
			return nil, fmt.Errorf("dns: cannot listen on %v/udp: %w", a, err)
		}
		bound := netip.AddrPortFrom(a.Addr(), uint16(pc.LocalAddr().(*net.UDPAddr).Port))
		ln, err := net.Listen("tcp", bound.String())
		if err != nil {
			pc.Close()
			if a.Port() == 0 && errors.Is(err, syscall.EADDRINUSE) && attempt < bindAttempts {
				continue
			}
			return nil, fmt.Errorf("dns: cannot listen on %v/tcp: %w", bound, err)
		}
		l := &listener{want: a, addr: bound}
		if l.udp, err = newUDPServer(s, pc, &l.done); err != nil {
			pc.Close()
			ln.Close()
			return nil, fmt.Errorf("dns: cannot serve on %v: %w", bound, err)
		}
		// TCP clients are checked as they connect, with the UDP socket's
		// verdicts: the same interfaces are served over both.
		l.tcp = &dns.Server{Listener: arrivalListener{ln, l.udp.arrival}, Handler: s}
		if err := l.start(); err != nil {
			return nil, fmt.Errorf("dns: cannot serve on %v: %w", bound, err)
		}
		return l, nil
	}
}

// start runs both servers and returns once they accept queries, so a
// stop that follows can never race with a server that has not started.
// The UDP socket is bound already, so datagrams wait in it until the
// readers run.
func (l *listener) start() error {
	l.udp.start(udpReaders)
	errc := make(chan error, 1)
	started := make(chan struct{})
	l.tcp.NotifyStartedFunc = func() { close(started) }
	l.done.Add(1)
	go func() {
		defer l.done.Done()
		if err := l.tcp.ActivateAndServe(); err != nil {
			errc <- err
		}
	}()
	select {
	case <-started:
	case err := <-errc:
		l.stop(0)
		return err
	}
	return nil
}

// stop shuts both servers down, waiting up to drain for queries in
// progress before closing the sockets regardless. Shutdown errors only say
// that a server never started or did not drain in time; neither matters
// once the sockets are closed.
func (l *listener) stop(drain time.Duration) {
	l.udp.stop(drain)
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	l.tcp.ShutdownContext(ctx)
	cancel()
	l.tcp.Listener.Close()
}
