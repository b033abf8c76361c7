package dns

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// UDP is served by our own read loop rather than miekg/dns's Server: a
// few reader goroutines per socket, each reading a batch of datagrams at
// once (recvmmsg on Linux), answering them on the spot and sending the
// answers as one batch (sendmmsg). Answers from our zones never leave the
// reading goroutine and allocate nothing on the fast path; a query that
// needs an upstream is handed to a goroutine of its own, so a slow or dead
// upstream never holds up the datagrams behind it. TCP stays on miekg/dns.

const (
	// udpBatchSize is the most datagrams read or sent in one system call.
	udpBatchSize = 32
	// udpOutSize is the space for the answers of one batch; when a batch
	// needs more, what is ready is sent first.
	udpOutSize = 32 << 10
	// readRetryMax bounds the pause after repeated read errors that are
	// not a closed socket (so a persistent error cannot spin a core).
	readRetryMax = time.Second
)

// udpReaders is the number of reader goroutines per socket: one per core
// (up to 4), so reading, answering and sending overlap.
var udpReaders = min(runtime.GOMAXPROCS(0), 4)

// datagramIO reads and sends batches of datagrams on one socket.
// Implementations: batchIO (Linux, recvmmsg/sendmmsg) and singleIO.
type datagramIO interface {
	// read fills b.in with at least one datagram and returns how many.
	read(b *udpBatch) (int, error)
	// write sends b.out, skipping datagrams the kernel refuses.
	write(b *udpBatch) error
}

// inDatagram is one datagram read.
type inDatagram struct {
	buf     []byte // capacity udpReadSize
	n       int
	from    netip.AddrPort
	peer    net.Addr // the kernel's address of the sender, reused to answer (Linux)
	oob     []byte   // capacity oobSize: the control messages read with it
	ifindex int32    // the interface it arrived on (0: unknown; see arrivalKnown)
}

// outDatagram is one answer to send.
type outDatagram struct {
	b    []byte
	to   netip.AddrPort
	peer net.Addr
}

// udpBatch is one reader's buffers, reused for every batch.
type udpBatch struct {
	in    []inDatagram
	out   []outDatagram
	space []byte // backing store of the answers in out
}

func newUDPBatch(size int) *udpBatch {
	b := &udpBatch{
		in:    make([]inDatagram, size),
		out:   make([]outDatagram, 0, size),
		space: make([]byte, 0, udpOutSize),
	}
	for i := range b.in {
		b.in[i].buf = make([]byte, udpReadSize)
		b.in[i].oob = make([]byte, oobSize)
	}
	return b
}

// udpServer serves DNS on one UDP socket.
type udpServer struct {
	s       *Server
	conn    *net.UDPConn
	local   netip.AddrPort
	arrival *arrival // which interfaces' queries are answered
	// newIO makes each reader's datagramIO; tests replace it.
	newIO  func(*net.UDPConn) datagramIO
	sendFn func([]byte, netip.AddrPort) error // u.send, made once

	stopping atomic.Bool
	readers  sync.WaitGroup
	jobs     sync.WaitGroup // upstream jobs still to answer
	done     *sync.WaitGroup
}

func newUDPServer(s *Server, conn *net.UDPConn, done *sync.WaitGroup) (*udpServer, error) {
	if err := enableArrival(conn); err != nil {
		return nil, err
	}
	a, err := newArrival(s, conn)
	if err != nil {
		return nil, err
	}
	u := &udpServer{
		s:       s,
		conn:    conn,
		local:   conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		arrival: a,
		newIO:   newDatagramIO,
		done:    done,
	}
	u.sendFn = u.send
	return u, nil
}

// start runs the readers; they serve until stop.
func (u *udpServer) start(readers int) {
	for range readers {
		u.readers.Add(1)
		u.done.Add(1)
		dio := u.newIO(u.conn)
		go func() {
			defer u.done.Done()
			defer u.readers.Done()
			u.serve(dio)
		}()
	}
}

// stop ends reading at once, waits up to drain for upstream answers in
// progress and closes the socket; answers still pending after that are
// lost (the server's Close cancels them).
func (u *udpServer) stop(drain time.Duration) {
	u.stopping.Store(true)
	u.conn.SetReadDeadline(time.Unix(1, 0)) // wakes the readers
	u.readers.Wait()
	jobsDone := make(chan struct{})
	go func() {
		u.jobs.Wait()
		close(jobsDone)
	}()
	t := time.NewTimer(drain)
	select {
	case <-jobsDone:
	case <-t.C:
	}
	t.Stop()
	u.conn.Close()
	u.arrival.stop()
}

// serve is one reader: read a batch, answer it, send the answers.
func (u *udpServer) serve(dio datagramIO) {
	b := newUDPBatch(udpBatchSize)
	var pause time.Duration
	for {
		n, err := dio.read(b)
		if err != nil {
			if u.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			pause = min(max(2*pause, 5*time.Millisecond), readRetryMax)
			u.s.log.Warn("dns: cannot read from UDP socket", "addr", u.local, "err", err, "retry_in", pause)
			time.Sleep(pause)
			continue
		}
		pause = 0
		b.out, b.space = b.out[:0], b.space[:0]
		for i := range n {
			u.answer(b, dio, &b.in[i])
		}
		u.flush(b, dio)
	}
}

// flush sends the answers collected so far.
func (u *udpServer) flush(b *udpBatch, dio datagramIO) {
	if len(b.out) == 0 {
		return
	}
	if err := dio.write(b); err != nil && !u.stopping.Load() {
		u.s.log.Debug("dns: cannot send UDP answers", "addr", u.local, "err", err)
	}
	b.out, b.space = b.out[:0], b.space[:0]
}

// answer answers one datagram, adding the answer to the batch's output.
// A datagram that arrived on an interface we do not serve gets nothing:
// not even an error, which would reflect traffic at a spoofed source.
func (u *udpServer) answer(b *udpBatch, dio datagramIO, d *inDatagram) {
	if arrivalKnown && !u.arrival.allowed(d.ifindex) {
		u.s.stats.wrongInterface.Add(1)
		return
	}
	if cap(b.space)-len(b.space) < fastOutMin {
		u.flush(b, dio)
	}
	space := b.space[len(b.space):]
	reply, job := u.s.answerDatagram(d.buf[:d.n], d.from, u.local, space, u.sendFn)
	if job != nil {
		u.jobs.Add(1)
		u.done.Add(1)
		go func() {
			defer u.done.Done()
			defer u.jobs.Done()
			job.run()
		}()
	}
	if reply == nil {
		return
	}
	if len(reply) <= cap(space) {
		b.space = b.space[:len(b.space)+len(reply)] // it was built there
	}
	b.out = append(b.out, outDatagram{b: reply, to: d.from, peer: d.peer})
}

// send is how answers written after their reader moved on (upstream
// jobs) and answers too big for the batch go out.
func (u *udpServer) send(b []byte, to netip.AddrPort) error {
	_, err := u.conn.WriteToUDPAddrPort(b, to)
	return err
}

// answerDatagram answers one UDP query datagram. The answer is returned
// to be sent by the caller; it is built in space whenever it fits there.
// nil means no answer now. A non-nil job must still resolve the query upstream and
// sends its answer itself, through send.
//
// Queries the fast path does not take get exactly what miekg/dns's server
// gave them before it was replaced here: datagrams too short for a header
// and responses are dropped, the rest is unpacked into a dns.Msg and
// rejected as miekg/dns rejects (FORMERR, NOTIMP) or handed to serve.
func (s *Server) answerDatagram(pkt []byte, from, local netip.AddrPort, space []byte, send func([]byte, netip.AddrPort) error) ([]byte, *upstreamJob) {
	src := from.Addr().Unmap()
	if reply, ok := s.fastAnswer(pkt, src, space); ok {
		return reply, nil
	}
	if len(pkt) < headerLen {
		return nil, nil // miekg/dns: "let client hang, they are sending crap"
	}
	w := &udpWriter{local: local, remote: from, space: space, send: send}
	dh := dns.Header{
		Id:      binary.BigEndian.Uint16(pkt),
		Bits:    binary.BigEndian.Uint16(pkt[2:]),
		Qdcount: binary.BigEndian.Uint16(pkt[4:]),
		Ancount: binary.BigEndian.Uint16(pkt[6:]),
		Nscount: binary.BigEndian.Uint16(pkt[8:]),
		Arcount: binary.BigEndian.Uint16(pkt[10:]),
	}
	r := new(dns.Msg)
	switch action := dns.DefaultMsgAcceptFunc(dh); action {
	case dns.MsgIgnore:
		return nil, nil
	case dns.MsgAccept:
		if err := r.Unpack(pkt); err == nil {
			job := s.serve(w, r, src, true)
			if job != nil {
				w.detach()
			}
			return w.reply, job
		}
		reject(w, r, action)
	default:
		r.Unpack(pkt[:headerLen]) // rejected unread: only the header is known
		reject(w, r, action)
	}
	return w.reply, nil
}

// reject answers a query miekg/dns's server would not hand to a handler,
// as that server does.
func reject(w dns.ResponseWriter, r *dns.Msg, action dns.MsgAcceptAction) {
	opcode := r.Opcode
	r.SetRcodeFormatError(r)
	r.Zero = false
	if action == dns.MsgRejectNotImplemented {
		r.Opcode = opcode
		r.Rcode = dns.RcodeNotImplemented
	}
	r.Ns, r.Answer, r.Extra = nil, nil, nil
	w.WriteMsg(r)
}

// udpWriter is the dns.ResponseWriter of one UDP query on the full path.
// While the query is answered on its reader, the answer is kept (in the
// batch's space when it fits) and joins the batch; once the query has
// been handed to an upstream job, answers are sent directly.
type udpWriter struct {
	local, remote netip.AddrPort
	space         []byte
	reply         []byte
	send          func([]byte, netip.AddrPort) error
	detached      bool
}

func (w *udpWriter) detach() { w.detached, w.space = true, nil }

func (w *udpWriter) LocalAddr() net.Addr  { return net.UDPAddrFromAddrPort(w.local) }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.remote) }

func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	out, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}

func (w *udpWriter) Write(b []byte) (int, error) {
	if w.detached {
		if err := w.send(b, w.remote); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	// Our handler writes one answer per query; were there a second, it
	// would replace the first.
	if len(b) <= cap(w.space) {
		w.reply = append(w.space[:0], b...)
	} else {
		w.reply = append([]byte(nil), b...)
	}
	return len(b), nil
}

func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}

// singleIO reads and sends one datagram per system call: the portable
// datagramIO, used where recvmmsg/sendmmsg are not available.
type singleIO struct{ conn *net.UDPConn }

func (s singleIO) read(b *udpBatch) (int, error) {
	if err := readOne(s.conn, &b.in[0]); err != nil {
		return 0, err
	}
	return 1, nil
}

func (s singleIO) write(b *udpBatch) error {
	var errs []error
	for _, o := range b.out {
		if _, err := s.conn.WriteToUDPAddrPort(o.b, o.to); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
