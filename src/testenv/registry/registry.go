// Package registry runs a real OCI registry (distribution, built by
// hack/install-tools.sh from hack/tools/registry) on a loopback port, with its
// storage in a directory of its own, and pushes images and the chart to it.
//
// Images keep the repository path of the reference pods name them by:
// ghcr.io/kaidotio/prometheus-metrics-proxy-hook:0.1.0 is pushed as
// 127.0.0.1:PORT/kaidotio/prometheus-metrics-proxy-hook:0.1.0. A containerd
// mirror for ghcr.io pointing at the registry (HostsTOML) then serves the
// chart's default image references unchanged.
package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// Options configures a registry.
type Options struct {
	// Dir holds the storage, the config and the log; empty means a new
	// temporary directory, removed by Close.
	Dir string
	// Binary is the registry to run; empty means "registry" in the tools
	// directory (kubetest.ToolsBin).
	Binary string
}

// Registry is one running registry process.
type Registry struct {
	// Host is "127.0.0.1:PORT", the registry's host in references.
	Host string

	dir    string
	ownDir bool
	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once
}

// StartT starts a registry for a test and stops it when the test ends.
func StartT(t testing.TB) *Registry {
	t.Helper()
	r, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatalf("starting the registry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("stopping the registry: %v", err)
		}
	})
	return r
}

// Start runs the registry on a free loopback port and waits until it
// answers /v2/. A port taken between picking and binding is retried.
func Start(ctx context.Context, opts Options) (*Registry, error) {
	bin, err := binary(opts.Binary)
	if err != nil {
		return nil, err
	}
	dir, ownDir := opts.Dir, false
	if dir == "" {
		if dir, err = os.MkdirTemp("", "pmph-registry-"); err != nil {
			return nil, fmt.Errorf("creating the registry's directory: %w", err)
		}
		ownDir = true
	}
	var lastErr error
	for range 5 {
		r, err := start(ctx, bin, dir)
		if err == nil {
			r.ownDir = ownDir
			return r, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	if ownDir {
		os.RemoveAll(dir)
	}
	return nil, lastErr
}

func binary(bin string) (string, error) {
	if bin != "" {
		return bin, nil
	}
	return kubetest.Tool("registry")
}

func start(ctx context.Context, bin, dir string) (*Registry, error) {
	port, err := localproc.FreePort()
	if err != nil {
		return nil, err
	}
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	config := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(config, []byte(configYAML(dir, host)), 0o600); err != nil {
		return nil, fmt.Errorf("writing the registry's config: %w", err)
	}
	logPath := filepath.Join(dir, "registry.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating the registry's log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "serve", config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// No tracing exporter: the registry would otherwise dial an OTLP
	// collector.
	cmd.Env = append(os.Environ(), "OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_LOGS_EXPORTER=none")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	r := &Registry{Host: host, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(r.exited)
	}()
	if err := r.waitReady(ctx, 30*time.Second); err != nil {
		r.stop()
		return nil, fmt.Errorf("the registry on %s did not become ready: %w; its log ends with: %s", host, err, localproc.LogTail(logPath, 10, " | "))
	}
	return r, nil
}

// configYAML keeps the registry on loopback and quiet: no debug server, no
// storage health checks, no upload purging.
func configYAML(dir, host string) string {
	secret := make([]byte, 16)
	rand.Read(secret)
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  delete:
    enabled: true
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
health:
  storagedriver:
    enabled: false
`, filepath.Join(dir, "storage"), host, hex.EncodeToString(secret))
}

func (r *Registry) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Host+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /v2/ answered %s", resp.Status)
		}
		select {
		case <-r.exited:
			return errors.New("the process exited")
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Dir is the registry's directory (storage, config.yml, registry.log).
func (r *Registry) Dir() string { return r.dir }

// Pid is the registry process's id.
func (r *Registry) Pid() int { return r.cmd.Process.Pid }

// Close stops the registry (SIGTERM, then SIGKILL after 10 s) and removes its
// directory when Start created it.
func (r *Registry) Close() error {
	r.stop()
	if r.ownDir {
		return os.RemoveAll(r.dir)
	}
	return nil
}

func (r *Registry) stop() {
	r.once.Do(func() {
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
			<-r.exited
		}
	})
}
