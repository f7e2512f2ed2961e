package metricsproxy

import (
	"sync"
	"time"
)

// variant is what a metrics response depends on: the query and the two
// negotiation headers that produced it. Prometheus servers of different
// versions (an HA pair mid-upgrade) ask differently, so each way of asking
// keeps its own last good body.
type variant struct {
	query          string
	accept         string
	acceptEncoding string
}

// body is one cached response. refs counts the cache itself and every reader
// still writing it to a client; once it drops to zero the buffer is reused
// for the next scrape, so a steady scrape rate allocates nothing.
type body struct {
	variant         variant
	contentType     string
	contentEncoding string
	data            []byte
	storedAt        time.Time
	refs            int // guarded by cache.mu
}

// maxVariants bounds the number of ways of asking that are remembered; a
// pod is scraped by one or two Prometheus servers.
const maxVariants = 8

// maxSpare bounds the buffers kept for reuse.
const maxSpare = 2

// cache holds the last good body per variant within maxBytes in total.
type cache struct {
	maxBytes int64

	mu      sync.Mutex
	entries []*body // oldest first
	bytes   int64
	spare   [][]byte
}

func newCache(maxBytes int64) *cache { return &cache{maxBytes: maxBytes} }

// get returns the body stored for exactly v, or the most recent body that
// satisfies the request's Accept and Accept-Encoding; nil when none does.
// The caller must call release when it is done with the body.
func (c *cache) get(v variant) *body {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *body
	for i := len(c.entries) - 1; i >= 0; i-- {
		e := c.entries[i]
		if e.variant == v {
			best = e
			break
		}
		if best == nil && e.variant.query == v.query &&
			acceptable(v.accept, v.acceptEncoding, e.contentType, e.contentEncoding) {
			best = e
		}
	}
	if best != nil {
		best.refs++
	}
	return best
}

// release drops a reference taken by get.
func (c *cache) release(b *body) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unrefLocked(b)
}

// put stores b as the last good body of its variant. A body larger than the
// whole cache is not stored; put reports whether b was stored.
func (c *cache) put(b *body) bool {
	size := int64(len(b.data))
	c.mu.Lock()
	defer c.mu.Unlock()
	if size > c.maxBytes {
		c.recycleLocked(b.data)
		return false
	}
	b.refs = 1
	for i, e := range c.entries {
		if e.variant == b.variant {
			c.removeLocked(i)
			break
		}
	}
	c.entries = append(c.entries, b)
	c.bytes += size
	for len(c.entries) > maxVariants || c.bytes > c.maxBytes {
		c.removeLocked(0)
	}
	return true
}

func (c *cache) removeLocked(i int) {
	e := c.entries[i]
	c.entries = append(c.entries[:i], c.entries[i+1:]...)
	c.bytes -= int64(len(e.data))
	c.unrefLocked(e)
}

func (c *cache) unrefLocked(b *body) {
	b.refs--
	if b.refs == 0 {
		c.recycleLocked(b.data)
		b.data = nil
	}
}

// buffer returns an empty buffer for a new body, with room for at least
// hint bytes when a spare one has it.
func (c *cache) buffer(hint int) []byte {
	c.mu.Lock()
	for i, buf := range c.spare {
		if cap(buf) >= hint {
			c.spare = append(c.spare[:i], c.spare[i+1:]...)
			c.mu.Unlock()
			return buf[:0]
		}
	}
	c.mu.Unlock()
	return make([]byte, 0, hint)
}

// recycle hands back a buffer that was not stored (a failed or oversized
// body).
func (c *cache) recycle(buf []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recycleLocked(buf)
}

func (c *cache) recycleLocked(buf []byte) {
	if buf == nil || int64(cap(buf)) > c.maxBytes {
		return
	}
	if len(c.spare) < maxSpare {
		c.spare = append(c.spare, buf[:0])
		return
	}
	// Keep the larger buffers: they fit the next body without growing.
	for i, s := range c.spare {
		if cap(s) < cap(buf) {
			c.spare[i] = buf[:0]
			return
		}
	}
}

// variants lists the variants with a stored body, most recent first.
func (c *cache) variants() []variant {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]variant, 0, len(c.entries))
	for i := len(c.entries) - 1; i >= 0; i-- {
		out = append(out, c.entries[i].variant)
	}
	return out
}

// size is the number of bytes stored and the number of bodies.
func (c *cache) size() (bytes int64, bodies int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes, len(c.entries)
}

// storedAt is the time stamp of the body get(v) would return, zero when
// none fits.
func (c *cache) storedAt(v variant) time.Time {
	b := c.get(v)
	if b == nil {
		return time.Time{}
	}
	defer c.release(b)
	return b.storedAt
}

// sizeHint is the size of the body last stored for v, so that the next one
// is read into a buffer that fits.
func (c *cache) sizeHint(v variant) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.variant == v {
			return len(e.data)
		}
	}
	return 0
}
