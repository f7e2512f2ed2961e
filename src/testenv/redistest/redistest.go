// Package redistest runs real redis-server processes for tests and local
// tooling: each node on a free loopback port with its own directory, the
// settings the semaphore's safety depends on (append-only file with
// appendfsync always, noeviction, a password), and the faults tests inject
// (kill, restart from the append-only file, SIGSTOP/SIGCONT).
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// Options configures a cluster of independent nodes.
type Options struct {
	// Nodes is how many redis-server processes to start; zero means 3.
	Nodes int
	// Password is required by every node; empty means a random one.
	Password string
	// Dir holds one directory per node; empty means a new temporary one,
	// removed by Close.
	Dir string
	// Binary is the redis-server to run; empty means redis-server on PATH.
	Binary string
	// ExtraArgs are appended to every node's command line.
	ExtraArgs []string
}

// Cluster is a set of independent Redis nodes (not a Redis Cluster: the
// nodes know nothing of each other, as Redlock wants).
type Cluster struct {
	Nodes    []*Node
	Password string
	dir      string
	ownDir   bool
}

// Node is one redis-server process.
type Node struct {
	Port     int
	Dir      string
	password string
	binary   string
	extra    []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartT starts n nodes for a test and stops them when the test ends; it
// fails the test when redis-server is missing or does not start.
func StartT(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(Options{Nodes: n})
	if err != nil {
		t.Fatalf("starting %d redis-server nodes: %v", n, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping redis-server nodes: %v", err)
		}
	})
	return c
}

// Start starts the nodes and waits until each answers PING.
func Start(opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Binary == "" {
		opts.Binary = "redis-server"
	}
	bin, err := exec.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("redis-server was not found on PATH; install the Debian package redis-server (make test does it): %w", err)
	}
	c := &Cluster{Password: opts.Password, dir: opts.Dir}
	if c.Password == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		c.Password = hex.EncodeToString(b[:])
	}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "redistest-")
		if err != nil {
			return nil, err
		}
		c.dir, c.ownDir = d, true
	}
	for i := range opts.Nodes {
		dir := filepath.Join(c.dir, "node"+strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			_ = c.Close()
			return nil, err
		}
		n := &Node{Dir: dir, password: c.Password, binary: bin, extra: opts.ExtraArgs}
		c.Nodes = append(c.Nodes, n)
		if err := n.startOnFreePort(); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
	}
	return c, nil
}

// Addrs are the nodes' host:port, in order.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr()
	}
	return out
}

// Close kills every node (also stopped or paused ones) and removes the
// directories it created.
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes {
		n.Kill()
	}
	if c.ownDir {
		errs = append(errs, os.RemoveAll(c.dir))
	}
	return errors.Join(errs...)
}

// Addr is the node's 127.0.0.1:port.
func (n *Node) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)) }

func (n *Node) startOnFreePort() error {
	var lastErr error
	// Another process can take the port between our probe and redis-server's
	// bind; a new port fixes that.
	for range 5 {
		port, err := localproc.FreePort()
		if err != nil {
			return err
		}
		n.Port = port
		if lastErr = n.Start(); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

// Start starts the node's process on its port and directory, so a stopped
// node comes back with the data of its append-only file.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("redis-server on port %d is already running", n.Port)
	}
	// The password goes through a config file, not argv, so that it never
	// shows in ps; the file is readable by the owner only.
	conf := filepath.Join(n.Dir, "redis.conf")
	content := strings.Join([]string{
		"port " + strconv.Itoa(n.Port),
		"bind 127.0.0.1",
		"dir " + n.Dir,
		"appendonly yes",
		"appendfsync always",
		`save ""`,
		"maxmemory-policy noeviction",
		"requirepass " + n.password,
		"daemonize no",
		"logfile " + filepath.Join(n.Dir, "redis.log"),
	}, "\n") + "\n"
	if err := os.WriteFile(conf, []byte(content), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(n.binary, append([]string{conf}, n.extra...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	n.cmd, n.exited = cmd, exited
	if err := n.waitReady(10 * time.Second); err != nil {
		n.killLocked()
		return err
	}
	return nil
}

func (n *Node) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return fmt.Errorf("redis-server on port %d exited during start-up: %s", n.Port, n.logTail())
		case <-tick.C:
		}
		conn, err := n.dial(200 * time.Millisecond)
		if err == nil {
			_, err = conn.Do("PING")
			conn.Close()
			if err == nil {
				return nil
			}
		}
		lastErr = err
	}
	return fmt.Errorf("redis-server on port %d did not answer PING within %s (%v): %s", n.Port, timeout, lastErr, n.logTail())
}

func (n *Node) logTail() string {
	return localproc.LogTail(filepath.Join(n.Dir, "redis.log"), 10, " | ")
}

// Stop shuts the node down with SIGTERM (the append-only file is complete,
// as after a clean restart) and waits for it to exit.
func (n *Node) Stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		n.killLocked()
		return fmt.Errorf("redis-server on port %d ignored SIGTERM for 10s and was killed", n.Port)
	}
	n.cmd = nil
	return nil
}

// Kill stops the node with SIGKILL, like a crash; with appendfsync always
// every acknowledged write is still in its append-only file.
func (n *Node) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.killLocked()
}

func (n *Node) killLocked() {
	if n.cmd == nil {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.exited
	n.cmd = nil
}

// Restart kills the node and starts it again from its append-only file.
func (n *Node) Restart() error {
	n.Kill()
	return n.Start()
}

// Wipe deletes the node's data directory content; with Kill and Start it
// simulates a node that restarts without persistence.
func (n *Node) Wipe() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("redis-server on port %d is running; kill it before wiping its data", n.Port)
	}
	entries, err := os.ReadDir(n.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "redis.log" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(n.Dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// Pause freezes the node with SIGSTOP: connections stay open and nothing
// answers, like a hung server.
func (n *Node) Pause() error { return n.signal(syscall.SIGSTOP) }

// Resume continues a paused node.
func (n *Node) Resume() error { return n.signal(syscall.SIGCONT) }

func (n *Node) signal(sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("redis-server on port %d is not running", n.Port)
	}
	return syscall.Kill(-n.cmd.Process.Pid, sig)
}

// Running reports whether the node's process is up.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Pid is the process id of the running node, 0 when stopped.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

func (n *Node) dial(timeout time.Duration) (redis.Conn, error) {
	return redis.Dial("tcp", n.Addr(),
		redis.DialConnectTimeout(timeout), redis.DialReadTimeout(timeout), redis.DialWriteTimeout(timeout),
		redis.DialPassword(n.password))
}

// Do runs one command on the node on a fresh connection, for seeding and
// assertions in tests.
func (n *Node) Do(ctx context.Context, cmd string, args ...any) (any, error) {
	conn, err := n.dial(2 * time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return redis.DoContext(conn, ctx, cmd, args...)
}

// CommandCalls returns the calls count of one command from INFO
// commandstats (e.g. "evalsha"), for counting round trips.
func (n *Node) CommandCalls(ctx context.Context, command string) (int64, error) {
	info, err := redis.String(n.Do(ctx, "INFO", "commandstats"))
	if err != nil {
		return 0, err
	}
	prefix := "cmdstat_" + strings.ToLower(command) + ":calls="
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			num, _, _ := strings.Cut(rest, ",")
			return strconv.ParseInt(num, 10, 64)
		}
	}
	return 0, nil
}
