// Package kubetest runs a local Kubernetes control plane for tests and demos:
// Debian's etcd and a real kube-apiserver (optionally kube-controller-manager)
// built by hack/install-tools.sh, as child processes on loopback ports.
//
// There is no kubelet and no scheduler: Pods are stored, admitted and
// mutated (which is what an admission webhook needs), but never run.
package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

const (
	// defaultStartTimeout covers a loaded 2-core machine: the API server is
	// ready in about 13 s when idle, several times that while a parallel test
	// package compiles.
	defaultStartTimeout = 3 * time.Minute
	// pollInterval is how often a readiness condition is checked.
	pollInterval = 100 * time.Millisecond
	// probeTimeout bounds one readiness probe, so a hanging connection cannot
	// eat the whole start deadline.
	probeTimeout = 2 * time.Second
	// portAttempts is how often a component is started again after losing a
	// port to another process between our probe and its bind.
	portAttempts = 5
	// serviceClusterIPRange is required by the API server; nothing routes it.
	serviceClusterIPRange = "10.0.0.0/24"
)

// Options configure Start. The zero value starts etcd and kube-apiserver.
type Options struct {
	// ControllerManager also runs kube-controller-manager, so that
	// Deployments get ReplicaSets and Pods, Namespaces get their default
	// ServiceAccount, and deleted Namespaces are emptied.
	ControllerManager bool
	// StartTimeout bounds Start as a whole (in addition to its context).
	// Zero means 3 minutes.
	StartTimeout time.Duration
	// APIServerFlags are appended to the kube-apiserver command line; a flag
	// given twice takes the later value, so these override the defaults.
	APIServerFlags []string
	// ServingHosts are added to the API server certificate's SANs (beside
	// 127.0.0.1 and localhost), for clients that reach it another way: a
	// node's pods through the "kubernetes" Service's ClusterIP and name.
	ServingHosts []string
	// KeepDir leaves the working directory (logs, certificates, etcd data)
	// in place on Stop, for debugging a failing test. Without it etcd keeps
	// its data on tmpfs (/dev/shm), where its fsyncs cost nothing.
	KeepDir bool
	// Logf, when set, receives one line per step (t.Logf fits).
	Logf func(format string, args ...any)
}

// ControlPlane is a running etcd + kube-apiserver (+ kube-controller-manager).
// Its exported fields are set by Start and must not be changed.
type ControlPlane struct {
	// URL is the API server's base URL, https://127.0.0.1:PORT.
	URL string
	// Token is a bearer token of the user "admin" in group system:masters.
	Token string
	// CACertPEM is the CA that signed the API server's serving certificate.
	CACertPEM []byte
	// KubeconfigPath is a kubeconfig file for URL, Token and CACertPEM.
	KubeconfigPath string
	// EtcdURL is etcd's client URL.
	EtcdURL string
	// Dir is the working directory: one subdirectory per component, each with
	// its log file (<component>/<component>.log).
	Dir string

	opts    Options
	client  *http.Client
	etcdDir string // on tmpfs when available, so outside Dir
	// pickPorts is localproc.FreePorts; tests replace it to lose a port race on purpose.
	pickPorts func(n int) ([]int, error)

	mu    sync.Mutex
	procs []*process

	stopOnce sync.Once
	stopErr  error
}

// Start starts a control plane and returns once the API server answers
// /readyz (and, with ControllerManager, once the controllers work). On error
// everything it started is stopped again and the error carries the last lines
// of the failing component's log.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	apiServerBin, err := Tool("kube-apiserver")
	if err != nil {
		return nil, err
	}
	etcdBin, err := systemTool("etcd", "etcd-server")
	if err != nil {
		return nil, err
	}
	var kcmBin string
	if opts.ControllerManager {
		if kcmBin, err = Tool("kube-controller-manager"); err != nil {
			return nil, err
		}
	}
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, fmt.Errorf("cannot create the control plane's working directory: %w", err)
	}
	cp := &ControlPlane{Dir: dir, opts: opts, pickPorts: localproc.FreePorts}
	defer func() {
		if err != nil {
			if stopErr := cp.Stop(); stopErr != nil {
				err = errors.Join(err, stopErr)
			}
		}
	}()

	files, err := cp.writeCredentials()
	if err != nil {
		return nil, err
	}
	if err := cp.startEtcd(ctx, etcdBin); err != nil {
		return nil, err
	}
	if err := cp.startAPIServer(ctx, apiServerBin, files); err != nil {
		return nil, err
	}
	if err := cp.writeKubeconfig(); err != nil {
		return nil, err
	}
	if opts.ControllerManager {
		if err := cp.startControllerManager(ctx, kcmBin, files); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

// credentialFiles are the paths of the files the components read.
type credentialFiles struct {
	caCert, servingCert, servingKey, serviceAccountKey, tokens string
}

func (cp *ControlPlane) writeCredentials() (credentialFiles, error) {
	certs, err := NewServingCert(append([]string{"127.0.0.1", "localhost"}, cp.opts.ServingHosts...)...)
	if err != nil {
		return credentialFiles{}, err
	}
	saKey, err := newServiceAccountKey()
	if err != nil {
		return credentialFiles{}, err
	}
	token := make([]byte, 24)
	if _, err := rand.Read(token); err != nil {
		return credentialFiles{}, fmt.Errorf("cannot generate the admin token: %w", err)
	}
	cp.Token = hex.EncodeToString(token)
	cp.CACertPEM = certs.CACertPEM

	pki := filepath.Join(cp.Dir, "pki")
	files := credentialFiles{
		caCert:            filepath.Join(pki, "ca.crt"),
		servingCert:       filepath.Join(pki, "serving.crt"),
		servingKey:        filepath.Join(pki, "serving.key"),
		serviceAccountKey: filepath.Join(pki, "service-account.key"),
		tokens:            filepath.Join(pki, "tokens.csv"),
	}
	if err := os.Mkdir(pki, 0o700); err != nil {
		return credentialFiles{}, fmt.Errorf("cannot create the certificate directory: %w", err)
	}
	for path, data := range map[string][]byte{
		files.caCert:            certs.CACertPEM,
		files.servingCert:       certs.CertPEM,
		files.servingKey:        certs.KeyPEM,
		files.serviceAccountKey: saKey,
		// token,user,uid,"groups"
		files.tokens: fmt.Appendf(nil, "%s,admin,admin,\"system:masters\"\n", cp.Token),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return credentialFiles{}, fmt.Errorf("cannot write %s: %w", path, err)
		}
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cp.CACertPEM) {
		return credentialFiles{}, fmt.Errorf("the generated CA certificate does not parse")
	}
	cp.client = &http.Client{Transport: &bearerTransport{
		token: cp.Token,
		next: &http.Transport{
			// A proxy from the environment must never see loopback traffic.
			Proxy:               nil,
			TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     30 * time.Second,
		},
	}}
	return files, nil
}

func (cp *ControlPlane) logf(format string, args ...any) {
	if cp.opts.Logf != nil {
		cp.opts.Logf("kubetest: "+format, args...)
	}
}

func (cp *ControlPlane) componentDir(name string) (string, error) {
	dir := filepath.Join(cp.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cannot create the directory of %s: %w", name, err)
	}
	return dir, nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context, bin string) error {
	dir, err := cp.componentDir("etcd")
	if err != nil {
		return err
	}
	// etcd fsyncs every write; on tmpfs that costs nothing, and the data is
	// thrown away on Stop anyway. Where /dev/shm is missing, the disk works.
	dataParent := dir
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() && !cp.opts.KeepDir {
		if d, err := os.MkdirTemp("/dev/shm", "kubetest-etcd-"); err == nil {
			cp.etcdDir = d
			dataParent = d
		}
	}
	// etcd reads ETCD_* variables as flags; a user's ETCD_ settings must not
	// reach the test instance.
	env := filterEnv(os.Environ(), "ETCD_")
	attempt := 0
	ports, err := cp.launch(ctx, "etcd", dir, bin, 2, env,
		func(ports []int) ([]string, error) {
			attempt++
			// A data directory from a failed attempt knows other peer URLs.
			data := filepath.Join(dataParent, "data-"+strconv.Itoa(attempt))
			client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
			peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
			return []string{
				"--name=kubetest",
				"--data-dir=" + data,
				"--listen-client-urls=" + client,
				"--advertise-client-urls=" + client,
				"--listen-peer-urls=" + peer,
				"--initial-advertise-peer-urls=" + peer,
				"--initial-cluster=kubetest=" + peer,
				"--initial-cluster-state=new",
				"--logger=zap",
				"--log-outputs=stderr",
			}, nil
		},
		func(ctx context.Context, ports []int) error {
			return probe(ctx, &http.Transport{Proxy: nil, DisableKeepAlives: true},
				fmt.Sprintf("http://127.0.0.1:%d/health", ports[0]), `"health":"true"`)
		})
	if err != nil {
		return err
	}
	cp.EtcdURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	return nil
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, bin string, files credentialFiles) error {
	dir, err := cp.componentDir("kube-apiserver")
	if err != nil {
		return err
	}
	ports, err := cp.launch(ctx, "kube-apiserver", dir, bin, 1, os.Environ(),
		func(ports []int) ([]string, error) {
			args := []string{
				"--etcd-servers=" + cp.EtcdURL,
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--bind-address=127.0.0.1",
				"--advertise-address=127.0.0.1",
				// kube-apiserver 1.37 refuses a loopback advertise address
				// with the default endpoint reconciler; nothing here needs the
				// "kubernetes" Service's endpoints, so none is run.
				"--endpoint-reconciler-type=none",
				"--cert-dir=" + dir,
				"--tls-cert-file=" + files.servingCert,
				"--tls-private-key-file=" + files.servingKey,
				"--client-ca-file=" + files.caCert,
				"--service-account-key-file=" + files.serviceAccountKey,
				"--service-account-signing-key-file=" + files.serviceAccountKey,
				"--service-account-issuer=https://kubernetes.default.svc",
				"--token-auth-file=" + files.tokens,
				"--authorization-mode=RBAC",
				"--service-cluster-ip-range=" + serviceClusterIPRange,
			}
			return append(args, cp.opts.APIServerFlags...), nil
		},
		func(ctx context.Context, ports []int) error {
			return probe(ctx, cp.client.Transport, fmt.Sprintf("https://127.0.0.1:%d/readyz", ports[0]), "ok")
		})
	if err != nil {
		return err
	}
	cp.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
	return nil
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, bin string, files credentialFiles) error {
	dir, err := cp.componentDir("kube-controller-manager")
	if err != nil {
		return err
	}
	_, err = cp.launch(ctx, "kube-controller-manager", dir, bin, 1, os.Environ(),
		func(ports []int) ([]string, error) {
			return []string{
				"--kubeconfig=" + cp.KubeconfigPath,
				"--authentication-kubeconfig=" + cp.KubeconfigPath,
				"--authorization-kubeconfig=" + cp.KubeconfigPath,
				"--bind-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--cert-dir=" + dir,
				"--tls-cert-file=" + files.servingCert,
				"--tls-private-key-file=" + files.servingKey,
				"--service-account-private-key-file=" + files.serviceAccountKey,
				"--root-ca-file=" + files.caCert,
				"--service-cluster-ip-range=" + serviceClusterIPRange,
				"--leader-elect=false",
			}, nil
		},
		func(ctx context.Context, ports []int) error {
			if err := probe(ctx, cp.client.Transport, fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[0]), "ok"); err != nil {
				return err
			}
			// /healthz answers before the controllers have synced; the default
			// ServiceAccount of "default" shows that they run and can write.
			return cp.Do(ctx, http.MethodGet, "/api/v1/namespaces/default/serviceaccounts/default", nil, nil)
		})
	return err
}

// launch starts a component on fresh loopback ports and waits until ready
// reports success. Free ports are found by binding to port 0 and closing,
// so another process may take one before the component binds it; then the
// component is started again on new ports.
func (cp *ControlPlane) launch(ctx context.Context, name, dir, bin string, nports int, env []string,
	args func(ports []int) ([]string, error), ready func(ctx context.Context, ports []int) error,
) ([]int, error) {
	for attempt := 1; ; attempt++ {
		ports, err := cp.pickPorts(nports)
		if err != nil {
			return nil, err
		}
		argv, err := args(ports)
		if err != nil {
			return nil, err
		}
		cp.logf("starting %s on port(s) %v (log: %s)", name, ports, filepath.Join(dir, name+".log"))
		started := time.Now()
		p, err := startProcess(name, dir, bin, argv, env)
		if err != nil {
			return nil, err
		}
		cp.mu.Lock()
		cp.procs = append(cp.procs, p)
		cp.mu.Unlock()
		cp.logf("started %s as pid %d", name, p.pid())

		exited, err := waitReady(ctx, p, func(ctx context.Context) error { return ready(ctx, ports) })
		if err == nil {
			cp.logf("%s is ready after %s", name, time.Since(started).Round(time.Millisecond))
			return ports, nil
		}
		stopErr := p.stop()
		if stopErr == nil {
			cp.forget(p)
		}
		if exited {
			// The exit status is known only now that stop has reaped it.
			err = p.exitError()
		}
		if p.addressInUse() && attempt < portAttempts && stopErr == nil && ctx.Err() == nil {
			cp.logf("%s lost a port to another process; starting it again on new ports", name)
			continue
		}
		return nil, errors.Join(p.failure(err), stopErr)
	}
}

// forget drops a process that has been stopped and reaped, so that Stop does
// not signal its (possibly reused) process group id again.
func (cp *ControlPlane) forget(p *process) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for i, q := range cp.procs {
		if q == p {
			cp.procs = append(cp.procs[:i], cp.procs[i+1:]...)
			return
		}
	}
}

// waitReady polls ready until it succeeds, the process exits (exited is then
// true), or ctx ends.
func waitReady(ctx context.Context, p *process, ready func(ctx context.Context) error) (exited bool, err error) {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		probeCtx, cancel := context.WithTimeout(ctx, probeTimeout)
		last := ready(probeCtx)
		cancel()
		if last == nil {
			return false, nil
		}
		// An exited process fails at once, whatever the ticker says.
		select {
		case <-p.exited:
			return true, fmt.Errorf("%s exited early", p.name)
		default:
		}
		select {
		case <-p.exited:
			return true, fmt.Errorf("%s exited early", p.name)
		case <-ctx.Done():
			return false, fmt.Errorf("%s did not become ready before the start deadline (%v); the last check said: %v", p.name, context.Cause(ctx), last)
		case <-ticker.C:
		}
	}
}

// probe GETs url and succeeds on 200 with want in the body.
func probe(ctx context.Context, rt http.RoundTripper, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := readLimited(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func filterEnv(env []string, dropPrefix string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, dropPrefix) {
			out = append(out, kv)
		}
	}
	return out
}

func (cp *ControlPlane) writeKubeconfig() error {
	cp.KubeconfigPath = filepath.Join(cp.Dir, "kubeconfig")
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: admin
    namespace: default
current-context: kubetest
`, cp.URL, base64.StdEncoding.EncodeToString(cp.CACertPEM), cp.Token)
	if err := os.WriteFile(cp.KubeconfigPath, []byte(config), 0o600); err != nil {
		return fmt.Errorf("cannot write the kubeconfig: %w", err)
	}
	return nil
}

// Stop terminates every process Start started (SIGTERM, then SIGKILL after
// 10 s, to the whole process group), waits for them to exit and removes the
// working directory unless Options.KeepDir is set. It is safe to call more
// than once and from several goroutines; later calls return the first
// result.
func (cp *ControlPlane) Stop() error {
	if cp == nil {
		return nil
	}
	cp.stopOnce.Do(func() {
		cp.mu.Lock()
		procs := cp.procs
		cp.procs = nil
		cp.mu.Unlock()

		var errs []error
		// Reverse start order: clients go before the servers they talk to,
		// which keeps their logs free of connection errors.
		for i := len(procs) - 1; i >= 0; i-- {
			if err := procs[i].stop(); err != nil {
				errs = append(errs, err)
			}
		}
		if cp.client != nil {
			cp.client.CloseIdleConnections()
		}
		if cp.etcdDir != "" {
			if err := os.RemoveAll(cp.etcdDir); err != nil {
				errs = append(errs, fmt.Errorf("cannot remove etcd's data directory: %w", err))
			}
		}
		if !cp.opts.KeepDir {
			if err := os.RemoveAll(cp.Dir); err != nil {
				errs = append(errs, fmt.Errorf("cannot remove the control plane's working directory: %w", err))
			}
		} else {
			cp.logf("kept the working directory %s", cp.Dir)
		}
		cp.stopErr = errors.Join(errs...)
	})
	return cp.stopErr
}

// LogTail returns the last n lines of a component's log ("etcd",
// "kube-apiserver", "kube-controller-manager"), for a failing test's output.
// After Stop has removed the working directory it says that the log is gone.
func (cp *ControlPlane) LogTail(component string, n int) string {
	return localproc.LogTail(filepath.Join(cp.Dir, component, component+".log"), n, "\n")
}
