package semaphore

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"strings"
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
	acquire, occupied, renew, repair, release, inspect *script
}

func newScripts() scripts {
	return scripts{
		acquire:  newScript("acquire", acquireScript),
		occupied: newScript("occupied", occupiedScript),
		renew:    newScript("renew", renewScript),
		repair:   newScript("repair", repairScript),
		release:  newScript("release", releaseScript),
		inspect:  newScript("inspect", inspectScript),
	}
}

// node is one Redis server behind its own connection pool.
type node struct {
	addr    string
	pool    *redis.Pool
	timeout time.Duration
}

func newNode(addr, username, password string, timeout time.Duration, maxIdle int) *node {
	n := &node{addr: addr, timeout: timeout}
	n.pool = &redis.Pool{
		MaxIdle: maxIdle,
		// Connections idle for long may have been cut by a node restart;
		// checking them before use keeps that from costing an operation.
		TestOnBorrow: func(c redis.Conn, idleSince time.Time) error {
			if time.Since(idleSince) < 30*time.Second {
				return nil
			}
			_, err := redis.DoWithTimeout(c, timeout, "PING")
			return err
		},
		IdleTimeout: 5 * time.Minute,
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
	return n
}

// eval runs a script on this node within the node timeout. It does not take
// the caller's context on purpose: an operation that was sent must get its
// answer (or time out) so that a claim it made can be undone, even when the
// caller has stopped waiting.
func (n *node) eval(s *script, base string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	conn, err := n.pool.GetContext(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	full := make([]any, 0, len(args)+3)
	full = append(full, s.sha, 1, base)
	full = append(full, args...)
	reply, err := redis.DoWithTimeout(conn, n.timeout, "EVALSHA", full...)
	if e, ok := err.(redis.Error); ok && strings.HasPrefix(string(e), "NOSCRIPT") {
		full[0] = s.src
		reply, err = redis.DoWithTimeout(conn, n.timeout, "EVAL", full...)
	}
	return reply, err
}

func (n *node) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	conn, err := n.pool.GetContext(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = redis.DoWithTimeout(conn, n.timeout, "PING")
	return err
}
