package promk8s

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/prometheustest"
)

const (
	operatorTool = "prometheus-operator"
	// operatorModule is where the operator's CRDs come from: the module
	// hack/tools/prometheus-operator pins, so CRDs and operator agree.
	operatorModule = "github.com/prometheus-operator/prometheus-operator"
	// configKey is the key of the operator's Secret prometheus-<name> that
	// holds the generated configuration.
	configKey = "prometheus.yaml.gz"
	// syncInterval is how often the harness looks for a new configuration,
	// as the operator's config-reloader sidecar does in a pod.
	syncInterval = time.Second
)

var prometheusGVR = schema.GroupVersionResource{Group: "monitoring.coreos.com", Version: "v1", Resource: "prometheuses"}

// ServiceMonitorOptions add to Options what only StartFromServiceMonitors
// uses.
type ServiceMonitorOptions struct {
	Options
	// ServiceDiscoveryRole is the Prometheus resource's
	// spec.serviceDiscoveryRole: "EndpointSlice" (the default here) or
	// "Endpoints" (the operator's own default).
	ServiceDiscoveryRole string
}

// StartFromServiceMonitors starts prometheus-operator against the API server
// of kubeconfig with a Prometheus resource in namespace that selects every
// ServiceMonitor there (and in opts.Namespaces), and a host Prometheus that
// runs the configuration the operator generates, reloaded whenever the
// operator rewrites it. The operator's CRDs are applied first (server-side,
// from the pinned operator module). The resource asks for 0 replicas: the
// operator's StatefulSet never runs a pod, the host process is the
// Prometheus. Ready when it returns (the first generated configuration is
// loaded); everything is stopped and the resource deleted when the test ends.
func StartFromServiceMonitors(t testing.TB, kubeconfig, namespace string, opts ServiceMonitorOptions) *Prometheus {
	t.Helper()
	opts.Options = opts.withDefaults()
	if opts.ServiceDiscoveryRole == "" {
		opts.ServiceDiscoveryRole = "EndpointSlice"
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()

	if err := applyOperatorCRDs(ctx, kubeconfig, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	op, err := newOperator(kubeconfig, namespace, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := op.createPrometheus(ctx, t, opts); err != nil {
		t.Fatal(err)
	}
	if err := op.start(ctx, t.TempDir(), append([]string{namespace}, opts.Namespaces...)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := op.stop(); err != nil {
			t.Errorf("stopping prometheus-operator: %v", err)
		}
	})
	first, err := op.waitForConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, first, opts.Options)
	op.follow(srv)
	t.Cleanup(op.unfollow)
	return &Prometheus{Server: srv, operator: op, config: op.hostConfig}
}

// GeneratedConfig is the configuration as prometheus-operator wrote it (empty
// for StartPodDiscovering); Config is what the host process runs.
func (p *Prometheus) GeneratedConfig() string {
	if p.operator == nil {
		return ""
	}
	p.operator.mu.Lock()
	defer p.operator.mu.Unlock()
	return p.operator.generated
}

// Sync loads the operator's current configuration now, instead of within
// the next second; a no-op for StartPodDiscovering.
func (p *Prometheus) Sync(ctx context.Context) error {
	if p.operator == nil {
		return nil
	}
	return p.operator.sync(ctx, p.Server)
}

// operator is a prometheus-operator process and the configuration it wrote.
type operator struct {
	kubeconfig string
	namespace  string
	name       string // of the Prometheus resource
	kube       kubernetes.Interface
	dyn        dynamic.Interface

	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string

	syncMu sync.Mutex // one sync at a time

	rulesDir string
	rules    *ruleFiles

	mu        sync.Mutex
	gz        []byte // the Secret's value last loaded
	generated string
	host      string
	ruleNames []string // the rule ConfigMaps host reads
	lastErr   error

	stopFollow context.CancelFunc
	followDone chan struct{}
}

func newOperator(kubeconfig, namespace, rulesDir string) (*operator, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("cannot read the kubeconfig %s: %w", kubeconfig, err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot build a Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot build a Kubernetes client: %w", err)
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	return &operator{
		kubeconfig: kubeconfig, namespace: namespace, name: "promk8s-" + hex.EncodeToString(suffix), kube: kube, dyn: dyn,
		rulesDir: rulesDir, rules: &ruleFiles{kube: kube, namespace: namespace, dir: rulesDir},
	}, nil
}

// createPrometheus creates the Prometheus resource the operator generates
// the configuration for, and deletes it when the test ends.
func (op *operator) createPrometheus(ctx context.Context, t testing.TB, opts ServiceMonitorOptions) error {
	version, err := prometheusVersion()
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "Prometheus",
		"metadata":   map[string]any{"name": op.name, "namespace": op.namespace},
		"spec": map[string]any{
			// The host process is the Prometheus; the StatefulSet stays empty.
			"replicas": int64(0),
			// The operator writes configuration for this version.
			"version":              version,
			"scrapeInterval":       promDuration(opts.ScrapeInterval),
			"scrapeTimeout":        promDuration(opts.ScrapeTimeout),
			"evaluationInterval":   promDuration(opts.ScrapeInterval),
			"serviceDiscoveryRole": opts.ServiceDiscoveryRole,
			// Every ServiceMonitor in the namespaces the operator watches.
			"serviceMonitorSelector":          map[string]any{},
			"serviceMonitorNamespaceSelector": map[string]any{},
			// And every PrometheusRule: the harness writes the rule files.
			"ruleSelector":          map[string]any{},
			"ruleNamespaceSelector": map[string]any{},
		},
	}}
	res := op.dyn.Resource(prometheusGVR).Namespace(op.namespace)
	if _, err := res.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("cannot create the Prometheus resource %s/%s: %w", op.namespace, op.name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := res.Delete(ctx, op.name, metav1.DeleteOptions{}); err != nil {
			t.Logf("promk8s: cannot delete the Prometheus resource %s/%s: %v", op.namespace, op.name, err)
		}
	})
	return nil
}

// prometheusVersion is the version of prometheus-k8s, as "v3.16.0".
func prometheusVersion() (string, error) {
	bin, err := kubetest.Tool(prometheusTool)
	if err != nil {
		return "", err
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version failed: %w: %s", bin, err, out)
	}
	// "prometheus, version 3.16.0 (branch: ..., revision: ...)"
	fields := strings.Fields(string(out))
	for i, f := range fields {
		if f == "version" && i+1 < len(fields) {
			return "v" + fields[i+1], nil
		}
	}
	return "", fmt.Errorf("%s --version printed no version: %s", bin, out)
}

// applyOperatorCRDs applies every CRD of the pinned operator module and
// waits until the API server serves them. Server-side, because the
// Prometheus CRD is too large for client-side apply's annotation.
func applyOperatorCRDs(ctx context.Context, kubeconfig, scratch string) error {
	dir, err := operatorCRDDir(ctx)
	if err != nil {
		return err
	}
	kubectl, err := kubetest.Tool("kubectl")
	if err != nil {
		return err
	}
	// The module cache is read-only; kubectl only reads, but copying keeps
	// the set to the CRD files alone.
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRD files in %s (%v)", dir, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(scratch, filepath.Base(f)), data, 0o600); err != nil {
			return err
		}
	}
	for _, args := range [][]string{
		{"apply", "--server-side", "--force-conflicts", "--field-manager=promk8s", "-f", scratch},
		{"wait", "--for=condition=Established", "--timeout=120s", "-f", scratch},
	} {
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig=" + kubeconfig}, args...)...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args[:1], " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// operatorCRDDir is example/prometheus-operator-crd of the operator module
// that hack/tools/prometheus-operator pins (downloaded by the go command
// into its module cache, once).
func operatorCRDDir(ctx context.Context) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("cannot find the repository with `go env GOMOD`: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", operatorModule)
	cmd.Dir = filepath.Join(root, "hack", "tools", "prometheus-operator")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s in %s: %w", operatorModule, cmd.Dir, err)
	}
	var dir string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), `"Dir": `); ok {
			dir, _ = strconv.Unquote(strings.TrimSuffix(v, ","))
		}
	}
	if dir == "" {
		return "", fmt.Errorf("go mod download %s printed no module directory: %s", operatorModule, out)
	}
	return filepath.Join(dir, "example", "prometheus-operator-crd"), nil
}

// start runs the operator, scoped to namespaces, until /healthz answers.
func (op *operator) start(ctx context.Context, dir string, namespaces []string) error {
	bin, err := kubetest.Tool(operatorTool)
	if err != nil {
		return err
	}
	op.logPath = filepath.Join(dir, "prometheus-operator.log")
	var lastErr error
	// Another process can take the port between our probe and the
	// operator's bind; a new port fixes that.
	for range 3 {
		port, err := localproc.FreePort()
		if err != nil {
			return err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if lastErr = op.run(ctx, bin, dir, addr, namespaces); lastErr == nil {
			return nil
		}
		if !strings.Contains(lastErr.Error(), "address already in use") {
			return lastErr
		}
	}
	return lastErr
}

func (op *operator) run(ctx context.Context, bin, dir, addr string, namespaces []string) error {
	logFile, err := os.Create(op.logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin,
		"--web.listen-address="+addr,
		"--namespaces="+strings.Join(namespaces, ","),
		"--log-format=logfmt",
	)
	cmd.Dir = dir
	cmd.Env = append(withoutEnv(os.Environ(), "KUBECONFIG="), "KUBECONFIG="+op.kubeconfig)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	op.cmd, op.exited = cmd, exited
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	for {
		select {
		case <-exited:
			op.cmd = nil
			return fmt.Errorf("prometheus-operator exited during start-up: %s", op.logTail(15))
		case <-ctx.Done():
			_ = op.stop()
			return fmt.Errorf("prometheus-operator did not answer /healthz on %s in time: %s", addr, op.logTail(15))
		case <-time.After(pollInterval):
		}
		resp, err := client.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
}

func withoutEnv(env []string, prefix string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, prefix) {
			out = append(out, kv)
		}
	}
	return out
}

func (op *operator) logTail(n int) string { return localproc.LogTail(op.logPath, n, " | ") }

// stop ends the operator with SIGTERM, and SIGKILL after 10 s.
func (op *operator) stop() error {
	if op.cmd == nil {
		return nil
	}
	pgid := op.cmd.Process.Pid
	defer func() { op.cmd = nil }()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-op.exited:
		return nil
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-op.exited
		return errors.New("prometheus-operator ignored SIGTERM for 10s and was killed")
	}
}

// waitForConfig waits for the operator's first configuration and returns it
// as the host process runs it.
func (op *operator) waitForConfig(ctx context.Context) (string, error) {
	for {
		changed, err := op.fetch(ctx)
		if err == nil && changed {
			return op.hostConfig(), nil
		}
		select {
		case <-op.exited:
			return "", fmt.Errorf("prometheus-operator exited: %s", op.logTail(15))
		case <-ctx.Done():
			return "", fmt.Errorf("prometheus-operator wrote no configuration into the Secret %s/prometheus-%s in time (last error: %v): %s", op.namespace, op.name, err, op.logTail(15))
		case <-time.After(pollInterval):
		}
	}
}

// fetch reads the operator's Secret and rule ConfigMaps and, when either
// changed, turns them into the host configuration and rule files.
func (op *operator) fetch(ctx context.Context) (changed bool, err error) {
	secret, err := op.kube.CoreV1().Secrets(op.namespace).Get(ctx, "prometheus-"+op.name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("cannot read the operator's Secret: %w", err)
	}
	gz, ok := secret.Data[configKey]
	if !ok {
		return false, fmt.Errorf("the operator's Secret %s/%s has no key %s", op.namespace, secret.Name, configKey)
	}
	op.mu.Lock()
	same, generated, host, ruleNames := bytes.Equal(gz, op.gz), op.generated, op.host, op.ruleNames
	op.mu.Unlock()
	if !same {
		raw, err := gunzip(gz)
		if err != nil {
			return false, err
		}
		generated = string(raw)
		if host, ruleNames, err = HostConfig(raw, Host{Kubeconfig: op.kubeconfig, ReloaderEnv: op.reloaderEnv(), RulesDir: op.rulesDir}); err != nil {
			return false, err
		}
	}
	rules, err := op.rules.fetch(ctx, ruleNames)
	if err != nil {
		return false, err
	}
	if same && !rules {
		return false, nil
	}
	op.mu.Lock()
	op.gz, op.generated, op.host, op.ruleNames = gz, generated, host, ruleNames
	op.mu.Unlock()
	return true, nil
}

func gunzip(gz []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("the operator's %s is not gzip: %w", configKey, err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("cannot unpack the operator's %s: %w", configKey, err)
	}
	return raw, nil
}

// reloaderEnv is what the config-reloader of the StatefulSet's first pod
// (shard 0) has in its environment; the host process stands in for that pod.
func (op *operator) reloaderEnv() map[string]string {
	return map[string]string{"SHARD": "0", "POD_NAME": "prometheus-" + op.name + "-0"}
}

func (op *operator) hostConfig() string {
	op.mu.Lock()
	defer op.mu.Unlock()
	return op.host
}

// sync loads a changed configuration into srv.
func (op *operator) sync(ctx context.Context, srv *prometheustest.Server) error {
	op.syncMu.Lock()
	defer op.syncMu.Unlock()
	changed, err := op.fetch(ctx)
	if err == nil && changed {
		err = srv.Reload(ctx, op.hostConfig())
	}
	op.mu.Lock()
	op.lastErr = err
	op.mu.Unlock()
	return err
}

// follow reloads srv whenever the operator rewrites the configuration, as
// the config-reloader sidecar does in the operator's pods.
func (op *operator) follow(srv *prometheustest.Server) {
	ctx, cancel := context.WithCancel(context.Background())
	op.stopFollow, op.followDone = cancel, make(chan struct{})
	go func() {
		defer close(op.followDone)
		tick := time.NewTicker(syncInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			syncCtx, cancelSync := context.WithTimeout(ctx, 10*time.Second)
			_ = op.sync(syncCtx, srv)
			cancelSync()
		}
	}()
}

func (op *operator) unfollow() {
	if op.stopFollow != nil {
		op.stopFollow()
		<-op.followDone
	}
}

// state says what went wrong last, for a failing wait.
func (op *operator) state() string {
	op.mu.Lock()
	lastErr := op.lastErr
	op.mu.Unlock()
	s := "; prometheus-operator log: " + op.logTail(10)
	if lastErr != nil {
		s = "; last configuration sync: " + lastErr.Error() + s
	}
	return s
}
