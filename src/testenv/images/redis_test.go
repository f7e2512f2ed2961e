package images_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// The chart's auth-config init container and readiness probe, as
// templates/redis-statefulset.yaml runs them.
const (
	authConfigScript = `umask 077
pw=$(cat /run/secrets/redis/password)
if [ -z "$pw" ]; then echo "The Redis password Secret is empty." >&2; exit 1; fi
escaped=$(printf '%s' "$pw" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')
printf 'requirepass "%s"\n' "$escaped" > /run/redis-auth/auth.conf`
	readinessProbe = `REDISCLI_AUTH="$(cat /run/secrets/redis/password)" redis-cli -h 127.0.0.1 -p %d ping | grep -qx PONG`
)

func TestRedisImageConfig(t *testing.T) {
	chart, err := images.ReadChart(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	b := sharedBuild(t, images.NameRedis)
	cfg := configOf(t, b.Image)
	if len(b.Refs) != 1 || b.Refs[0] != chart.RedisRef() {
		t.Errorf("references %q, want the chart's %q", b.Refs, chart.RedisRef())
	}
	// Debian bookworm's Redis is 7.0, under the chart's 7.4 tag: the label
	// says which Redis the image really holds.
	if v := cfg.Config.Labels["org.opencontainers.image.version"]; !strings.HasPrefix(v, "7.") {
		t.Errorf("version label %q, want Debian's Redis 7.x", v)
	}
	if cfg.Config.User != "999:999" {
		t.Errorf("user %q, want 999:999 (the chart's Redis uid)", cfg.Config.User)
	}
}

// TestRedisImageRunsTheChartsCommands runs, chrooted into the extracted image
// as uid 999, what the chart's Redis pod runs: the auth-config script, then
// redis-server with a config that includes its output, then the readiness
// probe; and PINGs the server with the password.
func TestRedisImageRunsTheChartsCommands(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running the image's redis-server needs chroot, which needs root; this machine runs the test as a normal user")
	}
	dir := extract(t, sharedBuild(t, images.NameRedis).Image)
	port, err := localproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	const password = `pa"ss\word`
	writeOwned(t, dir, "run/secrets/redis/password", password, 0o440)
	writeOwned(t, dir, "etc/redis/redis.conf", fmt.Sprintf(
		"port %d\nbind 127.0.0.1\ndir /data\nappendonly yes\nappendfsync always\nsave \"\"\ninclude /run/redis-auth/auth.conf\n", port), 0o444)
	if err := os.MkdirAll(filepath.Join(dir, "run/redis-auth"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(dir, "run/redis-auth"), images.RedisUID, images.RedisUID); err != nil {
		t.Fatal(err)
	}

	if out, err := inImage(dir, "/bin/sh", "-ec", authConfigScript).CombinedOutput(); err != nil {
		t.Fatalf("the chart's auth-config script failed in the image: %v\n%s", err, out)
	}
	server := inImage(dir, "/usr/bin/redis-server", "/etc/redis/redis.conf")
	server.Dir = "/data"
	logPath := filepath.Join(t.TempDir(), "redis.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	server.Stdout, server.Stderr = logFile, logFile
	if err := server.Start(); err != nil {
		t.Fatalf("starting the image's redis-server: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- server.Wait() }()
	t.Cleanup(func() {
		server.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			server.Process.Kill()
			<-exited
		}
	})

	conn := dialWithDeadline(t, fmt.Sprintf("127.0.0.1:%d", port), password, exited, logPath)
	defer conn.Close()
	if pong, err := redis.String(conn.Do("PING")); err != nil || pong != "PONG" {
		t.Errorf("PING = %q, %v; want PONG", pong, err)
	}
	if info, err := redis.String(conn.Do("INFO", "server")); err != nil || !strings.Contains(info, "redis_version:7.") {
		t.Errorf("INFO server = %v (%q); want redis_version 7.x", err, info)
	}
	if out, err := inImage(dir, "/bin/sh", "-c", fmt.Sprintf(readinessProbe, port)).CombinedOutput(); err != nil {
		t.Errorf("the chart's readiness probe failed in the image: %v\n%s", err, out)
	}
}

// inImage runs a command chrooted into the extracted image as the chart's
// Redis user, with the image's PATH.
func inImage(dir, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.Env = []string{images.DefaultPath}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     dir,
		Credential: &syscall.Credential{Uid: images.RedisUID, Gid: images.RedisUID},
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	return cmd
}

func writeOwned(t *testing.T, dir, name, content string, mode os.FileMode) {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 0, images.RedisUID); err != nil {
		t.Fatal(err)
	}
}

// dialWithDeadline waits until the server accepts an authenticated PING.
func dialWithDeadline(t *testing.T, addr, password string, exited <-chan error, logPath string) redis.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var lastErr error
	for {
		conn, err := redis.DialContext(ctx, "tcp", addr, redis.DialPassword(password), redis.DialConnectTimeout(time.Second))
		if err == nil {
			return conn
		}
		lastErr = err
		select {
		case err := <-exited:
			t.Fatalf("the image's redis-server exited (%v); its log ends with: %s", err, localproc.LogTail(logPath, 10, " | "))
		case <-ctx.Done():
			t.Fatalf("the image's redis-server did not answer on %s: %v; its log ends with: %s", addr, lastErr, localproc.LogTail(logPath, 10, " | "))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
