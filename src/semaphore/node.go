package semaphore

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
)

// script is a Lua script with its SHA1, sent by EVALSHA; a node that does not
// know it yet (first use, or restarted) gets one EVAL that also caches it.
type script struct {
	name string
	src  string
	sha  string
}

func newScript(name, src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{name: name, src: src, sha: hex.EncodeToString(sum[:])}
}

type scripts struct {
	acquire, claim, settle, fingerprints, renew, repair, release, inspect, leases, holders *script
}

func newScripts() scripts {
	return scripts{
		acquire:      newScript("acquire", recordLua+acquireScript),
		claim:        newScript("claim", recordLua+claimScript),
		settle:       newScript("settle", recordLua+settleScript),
		fingerprints: newScript("fingerprints", fingerprintsScript),
		renew:        newScript("renew", recordLua+renewScript),
		repair:       newScript("repair", recordLua+repairScript),
		release:      newScript("release", releaseScript),
		inspect:      newScript("inspect", inspectScript),
		leases:       newScript("leases", leasesScript),
		holders:      newScript("holders", holdersScript),
	}
}

// node is one Redis server behind its own connection pool.
type node struct {
	addr     string
	timeout  time.Duration
	username string
	password string
	newPool  func() *redis.Pool
	// pool is replaced as a whole when the server drops connections (a
	// restart): every idle connection is then dead, and finding that out one
	// failed operation at a time would cost an operation per connection.
	pool atomic.Pointer[redis.Pool]
}

func newNode(addr, username, password string, timeout time.Duration, maxIdle int) *node {
	n := &node{addr: addr, timeout: timeout, username: username, password: password}
	n.newPool = func() *redis.Pool {
		return &redis.Pool{
			MaxIdle:     maxIdle,
			IdleTimeout: 5 * time.Minute,
			// Connections idle for long may have been cut by a firewall;
			// checking them before use keeps that from costing an operation.
			TestOnBorrow: func(c redis.Conn, idleSince time.Time) error {
				if time.Since(idleSince) < 30*time.Second {
					return nil
				}
				_, err := redis.DoWithTimeout(c, timeout, "PING")
				return err
			},
			DialContext: func(ctx context.Context) (redis.Conn, error) {
				opts := []redis.DialOption{
					redis.DialConnectTimeout(timeout),
					redis.DialReadTimeout(timeout),
					redis.DialWriteTimeout(timeout),
				}
				if password != "" {
					opts = append(opts, redis.DialPassword(password))
				}
				if username != "" {
					opts = append(opts, redis.DialUsername(username))
				}
				return redis.DialContext(ctx, "tcp", addr, opts...)
			},
		}
	}
	n.pool.Store(n.newPool())
	return n
}

func (n *node) close() error { return n.pool.Load().Close() }

// eval runs a script on this node within the node timeout. It does not take
// the caller's context on purpose: an operation that was sent must get its
// answer (or time out) so that a claim it made can be undone, even when the
// caller has stopped waiting.
//
// A connection the server has closed is retried once on a fresh pool. Every
// script here is safe to run twice (acquire is idempotent per holder, the
// others compare the holder), so a retry cannot take a second slot.
func (n *node) eval(s *script, base string, args ...any) (any, error) {
	full := make([]any, 0, len(args)+3)
	full = append(full, s.sha, 1, base)
	full = append(full, args...)
	began := time.Now()
	reply, err := n.do(n.timeout, s, full)
	if brokenConn(err) {
		n.renewPool()
		if left := n.timeout - time.Since(began); left > 0 {
			reply, err = n.do(left, s, full)
		}
	}
	return reply, err
}

func (n *node) do(timeout time.Duration, s *script, args []any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := n.pool.Load().GetContext(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	args[0] = s.sha
	reply, err := redis.DoWithTimeout(conn, timeout, "EVALSHA", args...)
	if e, ok := err.(redis.Error); ok && strings.HasPrefix(string(e), "NOSCRIPT") {
		args[0] = s.src
		reply, err = redis.DoWithTimeout(conn, timeout, "EVAL", args...)
	}
	return reply, err
}

// renewPool swaps in a fresh pool; concurrent callers that saw the same dead
// pool swap only once.
func (n *node) renewPool() {
	old := n.pool.Load()
	if n.pool.CompareAndSwap(old, n.newPool()) {
		_ = old.Close()
	}
}

func brokenConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// evalQueued runs a script on a fresh connection, sending the
// authentication and the script together without waiting in between. A hung
// node accepts the connection (the kernel does) and queues both; a pooled or
// normally dialled connection would wait for the authentication's answer and
// never send the script. It is for settling claims on nodes that may be
// hung: the node runs the settle when it resumes, even though the answer
// never reaches us. EVAL, not EVALSHA: a node that restarted has no cache.
func (n *node) evalQueued(s *script, base string, args ...any) (any, error) {
	conn, err := redis.Dial("tcp", n.addr,
		redis.DialConnectTimeout(n.timeout), redis.DialReadTimeout(n.timeout), redis.DialWriteTimeout(n.timeout))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if n.password != "" {
		auth := []any{n.password}
		if n.username != "" {
			auth = []any{n.username, n.password}
		}
		if err := conn.Send("AUTH", auth...); err != nil {
			return nil, err
		}
	}
	full := make([]any, 0, len(args)+3)
	full = append(full, s.src, 1, base)
	full = append(full, args...)
	if err := conn.Send("EVAL", full...); err != nil {
		return nil, err
	}
	if err := conn.Flush(); err != nil {
		return nil, err
	}
	if n.password != "" {
		if _, err := conn.Receive(); err != nil {
			return nil, err
		}
	}
	return conn.Receive()
}

func (n *node) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	conn, err := n.pool.Load().GetContext(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = redis.DoWithTimeout(conn, n.timeout, "PING")
	if brokenConn(err) {
		n.renewPool()
	}
	return err
}
