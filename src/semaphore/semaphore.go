package semaphore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// MaxSize is the largest semaphore size: the scripts scan up to this many
// slots on a node while it serves nothing else (docs/performance.md has the
// cost).
const MaxSize = 1024

// MinTTL is the shortest lease TTL: below it the drift allowance and a few
// round trips leave no validity.
const MinTTL = 100 * time.Millisecond

// DefaultNodeTimeout suits Redis on loopback or inside a cluster; it keeps an
// Acquire far below an admission webhook's 5 s budget even with a hung node.
const DefaultNodeTimeout = 50 * time.Millisecond

// maxAttempts bounds the attempts of an Acquire whose nodes disagreed on
// the slot (racing acquirers): enough that TestContendedNearCapacity sees no
// acquisition refused while slots were free (docs/performance.md has the
// figures for fewer). Each retry costs two round trips and a pause of at
// most maxPause.
const maxAttempts = 20

// maxPause caps the random pause before a retry.
const maxPause = 5 * time.Millisecond

// Config describes the Redis nodes.
type Config struct {
	// Addrs are the host:port of the M independent Redis servers. M fixes
	// the quorum, M/2+1, whatever number of nodes answers later.
	Addrs []string
	// Username and Password authenticate to every node (Username only for
	// Redis ACL users). They never appear in errors.
	Username string
	Password string
	// NodeTimeout bounds dial, write and read of each command on a node.
	// Zero means DefaultNodeTimeout.
	NodeTimeout time.Duration
	// MaxIdle is the number of idle connections kept per node; zero means 64.
	MaxIdle int
	// KeyPrefix namespaces every key; zero means "pmph".
	KeyPrefix string
	// Metrics, when set, records operations and node errors.
	Metrics *Metrics
}

// Client takes and keeps slots of semaphores. It is safe for concurrent use.
type Client struct {
	nodes   []*node
	quorum  int
	prefix  string
	scripts scripts
	metrics *Metrics
	// background tracks the work that outlives a call: undoing claims that
	// arrive after the outcome was decided, repairing nodes after a renewal.
	background sync.WaitGroup
	// claimsInFlight tracks the acquisitions won before every node
	// answered, for Renew and Release to wait on.
	claimsInFlight *claimsInFlight
}

// New builds a client over one connection pool per node. It does not
// connect; use Ping to check the nodes.
func New(cfg Config) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("semaphore: at least one Redis address is required")
	}
	if len(cfg.Addrs)%2 == 0 {
		return nil, fmt.Errorf("semaphore: %d Redis addresses given; use an odd number so that a quorum survives the loss of a minority", len(cfg.Addrs))
	}
	seen := map[string]bool{}
	for _, a := range cfg.Addrs {
		if a == "" {
			return nil, errors.New("semaphore: a Redis address is empty")
		}
		if seen[a] {
			return nil, fmt.Errorf("semaphore: Redis address %q is listed twice; every node must be independent", a)
		}
		seen[a] = true
	}
	if cfg.NodeTimeout < 0 {
		return nil, fmt.Errorf("semaphore: node timeout %s must be positive", cfg.NodeTimeout)
	}
	if cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = DefaultNodeTimeout
	}
	if cfg.MaxIdle <= 0 {
		cfg.MaxIdle = 64
	}
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = "pmph"
	}
	c := &Client{
		quorum:         len(cfg.Addrs)/2 + 1,
		prefix:         cfg.KeyPrefix,
		scripts:        newScripts(),
		metrics:        cfg.Metrics,
		claimsInFlight: newClaimsInFlight(),
	}
	for _, a := range cfg.Addrs {
		c.nodes = append(c.nodes, newNode(a, cfg.Username, cfg.Password, cfg.NodeTimeout, cfg.MaxIdle))
	}
	c.metrics.initNodes(cfg.Addrs)
	return c, nil
}

// Quorum is the number of nodes that must agree: M/2+1.
func (c *Client) Quorum() int { return c.quorum }

// Nodes returns the node addresses in configuration order.
func (c *Client) Nodes() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.addr
	}
	return out
}

// Close waits for background clean-up (bounded by the node timeout) and
// closes the connection pools.
func (c *Client) Close() error {
	c.background.Wait()
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.close())
	}
	return errors.Join(errs...)
}

// Ping asks every node in parallel and returns one error per failed node. An
// error for which errors.Is(err, ErrAuth) holds means the password is wrong,
// a configuration error rather than an outage.
func (c *Client) Ping(ctx context.Context) []NodeError {
	replies := c.fanout(func(n *node) (any, error) { return nil, n.ping() })
	var failures []NodeError
	for received := 0; received < len(c.nodes); received++ {
		select {
		case r := <-replies:
			if r.err != nil {
				failures = append(failures, NodeError{Node: c.nodes[r.node].addr, Err: r.err})
			}
		case <-ctx.Done():
			c.drain(replies, len(c.nodes)-received, nil)
			return append(failures, NodeError{Node: "all", Err: ctx.Err()})
		}
	}
	return failures
}

// Lease is a slot held by a holder.
type Lease struct {
	// Name identifies the semaphore (the webhook uses "<namespace>/<key>").
	Name string
	Slot int
	// Holder is the random 128-bit id (32 hex digits) stored in the slot;
	// knowing it is what allows renewing and releasing the lease.
	Holder string
	// Deadline is when the lease's validity runs out, on this process's
	// monotonic clock. It is zero for a lease named by a remote caller (the
	// lease API), whose validity only the nodes know.
	Deadline time.Time
}

// Valid reports whether the lease's validity has not run out at now. A lease
// without a Deadline is never known to be valid locally.
func (l Lease) Valid(now time.Time) bool { return !l.Deadline.IsZero() && now.Before(l.Deadline) }

// NewHolderID returns a random 128-bit holder id as 32 hex digits.
// crypto/rand.Read never fails: it crashes the program instead.
func NewHolderID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidHolderID reports whether s has the shape of a holder id: 32 lowercase
// hex digits.
func ValidHolderID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if (ch < '0' || ch > '9') && (ch < 'a' || ch > 'f') {
			return false
		}
	}
	return true
}

func (c *Client) indexOf(addr string) int {
	for i, n := range c.nodes {
		if n.addr == addr {
			return i
		}
	}
	return -1
}

func (c *Client) base(name string) string { return c.prefix + ":{" + name + "}" }

func validate(name string, size int, ttl time.Duration) error {
	if name == "" {
		return errors.New("semaphore: the semaphore name is empty")
	}
	if size < 1 || size > MaxSize {
		return fmt.Errorf("semaphore: size %d must be from 1 to %d", size, MaxSize)
	}
	if ttl < MinTTL {
		return fmt.Errorf("semaphore: TTL %s must be at least %s", ttl, MinTTL)
	}
	return nil
}
