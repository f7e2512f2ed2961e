// Package faultproxy is a TCP proxy for fault-injection tests. It sits on
// loopback between clients and one server and, on command, delays every
// byte it forwards, refuses new connections or cuts the established ones,
// so that a test can make one Redis node slow or flaky while the server
// itself runs untouched.
//
//	p, err := faultproxy.Start(node.Addr())
//	defer p.Close()
//	p.SetLatency(30 * time.Millisecond) // each direction
//	p.CutAll()                          // RST every open connection
//	p.SetRefuse(true)                   // RST new connections at once
package faultproxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// dialTimeout bounds the connection to the target; a target that is down
// refuses at once on loopback, so this only matters for a hung one.
const dialTimeout = 2 * time.Second

// chunkQueue is how many read chunks may wait for their delivery time in
// one direction; reading stops while it is full, as a slow link would.
const chunkQueue = 256

// Proxy forwards connections from its own loopback address to a target.
type Proxy struct {
	target string
	ln     net.Listener

	latency atomic.Int64 // time.Duration added to each direction
	refuse  atomic.Bool

	mu     sync.Mutex
	conns  map[*link]struct{}
	closed bool
	wg     sync.WaitGroup

	accepted, refused, cut atomic.Int64
}

// Stats counts what the proxy did since it started.
type Stats struct {
	// Accepted connections were forwarded to the target.
	Accepted int64
	// Refused connections were reset at once (SetRefuse, or the target was
	// unreachable).
	Refused int64
	// Cut connections were reset by CutAll while open.
	Cut int64
}

// link is one client connection and its connection to the target.
type link struct {
	client, server *net.TCPConn
	once           sync.Once
	done           chan struct{}
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listening: %w", err)
	}
	p := &Proxy{target: target, ln: ln, conns: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's host:port, what clients dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// SetLatency delays every chunk of bytes by d in each direction (a round
// trip gets 2d), without limiting throughput; zero forwards at once. It
// applies to bytes read from now on.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(max(d, 0))) }

// SetRefuse makes the proxy reset every new connection as soon as it is
// accepted (on) or forward them again (off).
func (p *Proxy) SetRefuse(on bool) { p.refuse.Store(on) }

// CutAll resets every open connection, both towards the client and towards
// the target, and reports how many it cut.
func (p *Proxy) CutAll() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	p.cut.Add(int64(len(links)))
	return len(links)
}

// Active is the number of open forwarded connections.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{Accepted: p.accepted.Load(), Refused: p.refused.Load(), Cut: p.cut.Load()}
}

// Close stops listening, resets every connection and waits until every
// goroutine of the proxy has returned.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary failures (out of file descriptors) must not end
			// the proxy; a short pause keeps it from spinning.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		client := c.(*net.TCPConn)
		if p.refuse.Load() {
			reset(client)
			p.refused.Add(1)
			continue
		}
		p.wg.Add(1)
		go p.forward(client)
	}
}

func (p *Proxy) forward(client *net.TCPConn) {
	defer p.wg.Done()
	c, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		reset(client)
		p.refused.Add(1)
		return
	}
	l := &link{client: client, server: c.(*net.TCPConn), done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.close()
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()
	p.accepted.Add(1)

	var dirs sync.WaitGroup
	dirs.Add(2)
	go func() { defer dirs.Done(); p.pipe(l, l.server, l.client) }()
	go func() { defer dirs.Done(); p.pipe(l, l.client, l.server) }()
	dirs.Wait()
	l.close()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

type chunk struct {
	data []byte
	due  time.Time
}

// pipe copies src to dst, each chunk no earlier than its read time plus the
// latency. Any error or end of stream in either direction ends the link:
// Redis clients never half-close, so nothing is lost by not supporting it.
func (p *Proxy) pipe(l *link, dst, src *net.TCPConn) {
	queue := make(chan chunk, chunkQueue)
	var reader sync.WaitGroup
	reader.Add(1)
	go func() {
		defer reader.Done()
		defer close(queue)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				due := time.Now().Add(time.Duration(p.latency.Load()))
				select {
				case queue <- chunk{data: buf[:n], due: due}:
				case <-l.done:
					return
				}
			}
			if err != nil {
				l.close()
				return
			}
		}
	}()
	defer reader.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for c := range queue {
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.done:
				return
			}
		}
		if _, err := dst.Write(c.data); err != nil {
			l.close()
			return
		}
	}
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		reset(l.client)
		reset(l.server)
	})
}

// reset closes with an RST rather than a FIN, as a dropped connection or a
// crashed peer looks to the other side.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}
