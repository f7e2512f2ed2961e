package charts

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	corev1 "k8s.io/api/core/v1"
)

// The chart's Redis configuration and password handling, run for real: the
// auth-config init container's script writes the include file from the
// Secret (with a password full of quoting hazards), redis-server (the Debian
// package, as in the other tests) starts from the rendered redis.conf, and
// the node requires the password, has the settings the semaphore's safety
// depends on, and shows the password neither on its command line nor in its
// environment; the rendered probe authenticates from the Secret file.
func TestRedisConfigRuns(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server was not found on PATH; install the Debian package redis-server (make test does it): %v", err)
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli was not found on PATH (Debian package redis-tools): %v", err)
	}
	r := mustRender(t, renderOpts{})
	sts := r.statefulSet(t)
	spec := sts.Spec.Template.Spec
	cm := decode[corev1.ConfigMap](t, r.get(t, "ConfigMap", fullname+"-redis"))

	dir := t.TempDir()
	secrets, auth, data := filepath.Join(dir, "secrets"), filepath.Join(dir, "auth"), filepath.Join(dir, "data")
	for _, d := range []string{secrets, auth, data} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	const password = `p"a\ss w$rd'!` + "`x`"
	if err := os.WriteFile(filepath.Join(secrets, "password"), []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	paths := strings.NewReplacer("/run/secrets/redis", secrets, "/run/redis-auth", auth)

	// The init container.
	initC := container(t, spec, "auth-config")
	if len(initC.Command) != 3 || initC.Command[0] != "/bin/sh" {
		t.Fatalf("auth-config command %v", initC.Command)
	}
	out, err := exec.Command("/bin/sh", initC.Command[1], paths.Replace(initC.Command[2])).CombinedOutput()
	if err != nil {
		t.Fatalf("auth-config script: %v\n%s", err, out)
	}
	st, err := os.Stat(filepath.Join(auth, "auth.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		t.Errorf("auth.conf mode %v, want no group/other access", st.Mode().Perm())
	}

	// redis-server from the rendered config, on a free loopback port.
	port := freePort(t)
	conf := cm.Data["redis.conf"]
	conf = strings.NewReplacer(
		"port 6379", "port "+strconv.Itoa(port),
		"bind * -::*", "bind 127.0.0.1",
		"dir /data", "dir "+data,
		"include /run/redis-auth/auth.conf", "include "+filepath.Join(auth, "auth.conf"),
	).Replace(conf)
	confPath := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	main := container(t, spec, "redis")
	if strings.Join(main.Command, " ") != "redis-server /etc/redis/redis.conf" {
		t.Fatalf("redis command %v", main.Command)
	}
	cmd := exec.Command(bin, confPath)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan struct{})
	var logs strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				signalled = true
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	select {
	case <-ready:
	case err := <-exited:
		t.Fatalf("redis-server exited (%v) with the chart's config:\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("redis-server did not become ready")
	}

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	anon, err := redis.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Do("PING"); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("PING without a password: %v, want NOAUTH", err)
	}
	if _, err := anon.Do("AUTH", "wrong"); err == nil {
		t.Error("a wrong password was accepted")
	}
	c, err := redis.Dial("tcp", addr, redis.DialPassword(password))
	if err != nil {
		t.Fatalf("the Secret's password is refused: %v", err)
	}
	defer c.Close()
	for k, want := range map[string]string{
		"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction",
		"protected-mode": "yes", "save": "", "maxmemory": "100663296",
	} {
		kv, err := redis.Strings(c.Do("CONFIG", "GET", k))
		if err != nil || len(kv) != 2 || kv[1] != want {
			t.Errorf("CONFIG GET %s = %v (%v), want %q", k, kv, err, want)
		}
	}
	// A write lands in the append-only file before it is acknowledged.
	if _, err := c.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if info, _ := redis.String(c.Do("INFO", "persistence")); !strings.Contains(info, "aof_enabled:1") {
		t.Errorf("AOF not enabled:\n%s", info)
	}

	// The password is not on the command line nor in the environment.
	for _, f := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), password) || strings.Contains(string(b), "p\"a") {
			t.Errorf("the password is in /proc/<redis>/%s", f)
		}
	}

	// The probes authenticate from the Secret file (and fail without it).
	probes := map[string]*corev1.Probe{"readiness": main.ReadinessProbe, "liveness": main.LivenessProbe, "startup": main.StartupProbe}
	for name, p := range probes {
		if p == nil || p.Exec == nil || len(p.Exec.Command) != 3 {
			t.Fatalf("%s probe %+v", name, p)
		}
		script := strings.ReplaceAll(paths.Replace(p.Exec.Command[2]), "-p 6379", "-p "+strconv.Itoa(port))
		if out, err := exec.Command(p.Exec.Command[0], p.Exec.Command[1], script).CombinedOutput(); err != nil {
			t.Errorf("%s probe fails against a healthy node: %v\n%s", name, err, out)
		}
		if strings.Contains(strings.Join(p.Exec.Command, " "), password) {
			t.Errorf("%s probe carries the password", name)
		}
	}
	if err := os.WriteFile(filepath.Join(secrets, "password"), []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	script := strings.ReplaceAll(paths.Replace(main.ReadinessProbe.Exec.Command[2]), "-p 6379", "-p "+strconv.Itoa(port))
	if err := exec.Command("/bin/sh", "-c", script).Run(); err == nil {
		t.Error("the readiness probe passes with a wrong password")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
