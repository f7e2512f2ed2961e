package kubetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

const wantVersion = "v1.37.2"

// startForTest starts a control plane and stops it when the test ends,
// printing the API server log tail when the test failed.
func startForTest(t *testing.T, opts Options) *ControlPlane {
	t.Helper()
	opts.Logf = t.Logf
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cp, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start failed: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", cp.LogTail("kube-apiserver", 40))
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("Stop failed: %v", err)
		}
	})
	return cp
}

func pidsOf(cp *ControlPlane) []int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	pids := make([]int, 0, len(cp.procs))
	for _, p := range cp.procs {
		pids = append(pids, p.pid())
	}
	return pids
}

// assertGone checks that none of the given processes, nor any member of
// their process groups, is still alive (a zombie counts as alive: it means
// nobody waited for it).
func assertGone(t *testing.T, pids []int) {
	t.Helper()
	groups := map[int]bool{}
	for _, pid := range pids {
		groups[pid] = true
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d is still there after Stop (kill -0 said %v)", pid, err)
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("cannot list /proc: %v", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pgid, err := syscall.Getpgid(pid)
		if err != nil {
			continue // exited while we looked
		}
		if groups[pgid] {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			t.Errorf("process %d (%s) of a stopped process group is still running", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
}

func TestControlPlane(t *testing.T) {
	t.Parallel()
	cp := startForTest(t, Options{})
	ctx := t.Context()

	var version struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := cp.Do(ctx, http.MethodGet, "/version", nil, &version); err != nil {
		t.Fatalf("GET /version failed: %v", err)
	}
	if version.GitVersion != wantVersion {
		t.Fatalf("the API server reports version %q, want %q", version.GitVersion, wantVersion)
	}

	if err := cp.CreateNamespace(ctx, "kubetest", map[string]string{"purpose": "test"}); err != nil {
		t.Fatal(err)
	}
	// A second call finds both objects and succeeds: tests may share one.
	if err := cp.CreateNamespace(ctx, "kubetest", nil); err != nil {
		t.Fatalf("CreateNamespace is not idempotent: %v", err)
	}

	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"app"},
	  "spec":{"containers":[{"name":"app","image":"registry.k8s.io/pause:3.10"}]}}`
	var created struct {
		Metadata struct {
			UID string `json:"uid"`
		} `json:"metadata"`
		Spec struct {
			ServiceAccountName string `json:"serviceAccountName"`
		} `json:"spec"`
	}
	if err := cp.Do(ctx, http.MethodPost, "/api/v1/namespaces/kubetest/pods", pod, &created); err != nil {
		t.Fatalf("creating a pod failed: %v", err)
	}
	if created.Metadata.UID == "" || created.Spec.ServiceAccountName != "default" {
		t.Fatalf("the created pod has uid %q and service account %q; want a uid and the default account", created.Metadata.UID, created.Spec.ServiceAccountName)
	}
	err := cp.Do(ctx, http.MethodPost, "/api/v1/namespaces/kubetest/pods", pod, nil)
	if !IsAlreadyExists(err) {
		t.Fatalf("creating the same pod again returned %v, want an AlreadyExists error", err)
	}

	out, err := cp.Kubectl(ctx, "get", "pod", "app", "-n", "kubetest", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != "pod/app" {
		t.Fatalf("kubectl get printed %q, want pod/app", out)
	}
	out, err = cp.Kubectl(ctx, "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(out), `"gitVersion": "`+wantVersion+`"`) != 2 {
		t.Fatalf("kubectl version does not report %s for both client and server:\n%s", wantVersion, out)
	}

	pids := pidsOf(cp)
	if len(pids) != 2 {
		t.Fatalf("the control plane runs %d processes, want 2 (etcd, kube-apiserver)", len(pids))
	}
	dir := cp.Dir
	if err := cp.Stop(); err != nil {
		t.Fatalf("Stop failed: %v", err)
	}
	if err := cp.Stop(); err != nil {
		t.Fatalf("a second Stop failed: %v", err)
	}
	assertGone(t, pids)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the working directory %s is still there after Stop (stat said %v)", dir, err)
	}
}

func TestControllerManager(t *testing.T) {
	t.Parallel()
	cp := startForTest(t, Options{ControllerManager: true})
	ctx := t.Context()

	// With the controllers running, a namespace gets its ServiceAccount and
	// a Deployment its ReplicaSet and Pod without any help.
	ns := `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"apps"}}`
	if err := cp.Do(ctx, http.MethodPost, "/api/v1/namespaces", ns, nil); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, func() error {
		return cp.Do(ctx, http.MethodGet, "/api/v1/namespaces/apps/serviceaccounts/default", nil, nil)
	}); err != nil {
		t.Fatalf("the default ServiceAccount of a new namespace never appeared: %v", err)
	}
	deployment := `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
	  "spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},
	    "template":{"metadata":{"labels":{"app":"web"}},
	      "spec":{"containers":[{"name":"web","image":"registry.k8s.io/pause:3.10"}]}}}}`
	if err := cp.Do(ctx, http.MethodPost, "/apis/apps/v1/namespaces/apps/deployments", deployment, nil); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, func() error {
		var pods struct {
			Items []struct{} `json:"items"`
		}
		if err := cp.Do(ctx, http.MethodGet, "/api/v1/namespaces/apps/pods?labelSelector=app%3Dweb", nil, &pods); err != nil {
			return err
		}
		if len(pods.Items) != 1 {
			return errors.New("the Deployment has " + strconv.Itoa(len(pods.Items)) + " pods")
		}
		return nil
	}); err != nil {
		t.Fatalf("the Deployment never got its pod: %v", err)
	}

	pids := pidsOf(cp)
	if len(pids) != 3 {
		t.Fatalf("the control plane runs %d processes, want 3", len(pids))
	}
	if err := cp.Stop(); err != nil {
		t.Fatalf("Stop failed: %v", err)
	}
	assertGone(t, pids)
}

// waitFor polls cond until it succeeds or 60 s pass.
func waitFor(ctx context.Context, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-ticker.C:
		}
	}
}

func TestStartFailureStopsEverything(t *testing.T) {
	t.Parallel()
	// The log lines name every process started and the working directory.
	var lines []string
	_, err := Start(t.Context(), Options{
		APIServerFlags: []string{"--no-such-flag-for-kubetest"},
		Logf: func(format string, args ...any) {
			line := fmt.Sprintf(format, args...)
			t.Log(line)
			lines = append(lines, line)
		},
	})
	if err == nil {
		t.Fatal("Start succeeded with an unknown API server flag")
	}
	msg := err.Error()
	if !strings.Contains(msg, "kube-apiserver exited early") || !strings.Contains(msg, "no-such-flag-for-kubetest") {
		t.Fatalf("the error does not say that kube-apiserver exited and why:\n%s", msg)
	}

	startedRE := regexp.MustCompile(`started (\S+) as pid (\d+)`)
	logRE := regexp.MustCompile(`\(log: (\S+)\)`)
	var pids []int
	dirs := map[string]bool{}
	for _, line := range lines {
		if m := startedRE.FindStringSubmatch(line); m != nil {
			pid, _ := strconv.Atoi(m[2])
			pids = append(pids, pid)
		}
		if m := logRE.FindStringSubmatch(line); m != nil {
			dirs[filepath.Dir(filepath.Dir(m[1]))] = true
		}
	}
	if len(pids) < 2 || len(dirs) != 1 {
		t.Fatalf("the log names %d processes and %d working directories, want etcd and kube-apiserver in one:\n%s", len(pids), len(dirs), strings.Join(lines, "\n"))
	}
	assertGone(t, pids)
	for dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the working directory %s is still there after the failed start (stat said %v)", dir, err)
		}
	}
}

func TestMissingTools(t *testing.T) {
	t.Setenv("PMPH_TOOLS_BIN", t.TempDir())
	_, err := Start(t.Context(), Options{})
	if err == nil || !strings.Contains(err.Error(), "run `make tools`") {
		t.Fatalf("Start without tools returned %v, want an error telling to run `make tools`", err)
	}
}

// TestPortRace makes etcd lose its client port to another listener, as when
// another process binds a port between picking it and etcd: Start must
// start it again on new ports instead of failing.
func TestPortRace(t *testing.T) {
	t.Parallel()
	etcdBin, err := systemTool("etcd", "etcd-server")
	if err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	calls := 0
	cp := &ControlPlane{Dir: t.TempDir(), opts: Options{Logf: t.Logf}}
	cp.pickPorts = func(n int) ([]int, error) {
		calls++
		ports, err := localproc.FreePorts(n)
		if calls == 1 && err == nil {
			ports[0] = busy.Addr().(*net.TCPAddr).Port
		}
		return ports, err
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("Stop failed: %v", err)
		}
	})
	if err := cp.startEtcd(t.Context(), etcdBin); err != nil {
		t.Fatalf("etcd did not start after losing its port: %v", err)
	}
	if calls != 2 {
		t.Fatalf("ports were picked %d times, want 2 (one lost race, one retry)", calls)
	}
	if strings.HasSuffix(cp.EtcdURL, ":"+strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)) {
		t.Fatalf("etcd claims the busy port: %s", cp.EtcdURL)
	}
	if n := len(pidsOf(cp)); n != 1 {
		t.Fatalf("%d etcd processes are tracked after the retry, want 1", n)
	}
}
