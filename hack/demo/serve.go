package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/chartinstall"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/crds"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/kubectl"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/webhookconfig"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

const (
	release          = "pmph"
	releaseNamespace = "pmph-system"
	// exitAlreadyRunning tells `up` that another daemon won the lock.
	exitAlreadyRunning = 3
)

// serve is the daemon: it starts the environment, records it in state.json,
// keeps it running until SIGTERM or SIGINT (what `down` sends), and then
// stops everything it started. Its children die with it even when it is
// killed (see child), so a crash leaves nothing behind.
func serve(ctx context.Context, cfg config) int {
	logger := log.New(os.Stdout, "", log.LstdFlags)
	lock, ok, err := cfg.dir.lock()
	if err != nil {
		logger.Print(err)
		return 1
	}
	if !ok {
		logger.Print("another demo daemon holds the lock; this one exits")
		return exitAlreadyRunning
	}
	defer lock.Close()
	if err := os.WriteFile(cfg.dir.pidFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		logger.Print(err)
		return 1
	}
	defer os.Remove(cfg.dir.pidFile())
	defer os.Remove(cfg.dir.stateFile())

	st := &state{Phase: phaseStarting, Pid: os.Getpid(), Started: time.Now(), WebhookBinary: cfg.webhookBinary, SidecarBinary: cfg.sidecarBinary, Logs: map[string]string{}}
	if err := cfg.dir.writeState(st); err != nil {
		logger.Print(err)
		return 1
	}
	err = runEnvironment(ctx, cfg, st, logger)
	if err != nil && !errors.Is(err, context.Canceled) {
		logger.Printf("the demo environment failed: %v", err)
		return 1
	}
	logger.Print("stopped every process of the demo")
	return 0
}

// runEnvironment runs the environment of the daemon's mode until ctx ends.
func runEnvironment(ctx context.Context, cfg config, st *state, logger *log.Logger) error {
	st.Mode = cfg.mode
	if cfg.mode == modeNode {
		return runNode(ctx, cfg, st, logger)
	}
	return runControlPlane(ctx, cfg, st, logger)
}

// runControlPlane starts the control plane, Redis and the webhook, marks
// the state ready, waits for ctx and stops everything again (deferred, in
// reverse order).
func runControlPlane(ctx context.Context, cfg config, st *state, logger *log.Logger) error {
	// A fresh environment each time: old Redis data would hold slots of
	// pods that no longer exist. A killed predecessor may also have left
	// etcd's data behind.
	if err := cleanLeftovers(cfg); err != nil {
		return err
	}
	for _, sub := range []string{"tmp", "redis", "webhook", "manifests", "crds", "sidecars", "runs"} {
		if err := os.RemoveAll(cfg.dir.path(sub)); err != nil {
			return fmt.Errorf("cannot clean %s: %w", cfg.dir.path(sub), err)
		}
	}
	for _, sub := range []string{"tmp", "redis", "webhook", "crds"} {
		if err := os.MkdirAll(cfg.dir.path(sub), 0o755); err != nil {
			return fmt.Errorf("cannot create %s: %w", cfg.dir.path(sub), err)
		}
	}
	// kubetest puts the control plane's working directory (certificates,
	// logs) under the temporary directory: here, inside the state directory.
	if err := os.Setenv("TMPDIR", cfg.dir.path("tmp")); err != nil {
		return err
	}

	logger.Print("starting etcd, kube-apiserver and kube-controller-manager on loopback ports")
	cp, err := kubetest.Start(ctx, kubetest.Options{
		ControllerManager: true,
		StartTimeout:      5 * time.Minute,
		Logf:              func(format string, args ...any) { logger.Printf(format, args...) },
	})
	if err != nil {
		return fmt.Errorf("cannot start the control plane: %w", err)
	}
	defer func() {
		logger.Print("stopping the control plane")
		if err := cp.Stop(); err != nil {
			logger.Printf("stopping the control plane: %v", err)
		}
	}()
	kubeconfig, err := os.ReadFile(cp.KubeconfigPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(cfg.dir.kubeconfig(), kubeconfig, 0o600); err != nil {
		return fmt.Errorf("cannot write the kubeconfig: %w", err)
	}
	st.Kubeconfig, st.APIServer = cfg.dir.kubeconfig(), cp.URL
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		st.Logs[c] = filepath.Join(cp.Dir, c, c+".log")
	}

	k, err := kubectl.New(cfg.dir.kubeconfig())
	if err != nil {
		return err
	}
	logger.Print("applying the cert-manager, Istio and Prometheus Operator CRDs")
	names, err := crds.Apply(ctx, k, cfg.root, cfg.dir.path("crds"))
	if err != nil {
		return err
	}
	logger.Printf("applied %d CRDs", len(names))

	logger.Print("starting 3 Redis nodes")
	redis, err := redistest.Start(redistest.Options{Nodes: 3, Dir: cfg.dir.path("redis")})
	if err != nil {
		return fmt.Errorf("cannot start the Redis nodes: %w", err)
	}
	defer func() {
		logger.Print("stopping the Redis nodes")
		if err := redis.Close(); err != nil {
			logger.Printf("stopping the Redis nodes: %v", err)
		}
	}()
	st.RedisAddrs = redis.Addrs()
	for i, n := range redis.Nodes {
		st.Logs["redis-"+strconv.Itoa(i)] = filepath.Join(n.Dir, "redis.log")
	}
	logger.Printf("Redis nodes: %v", st.RedisAddrs)

	logger.Print("starting the webhook with a generated certificate for 127.0.0.1")
	wh, err := startWebhook(ctx, cfg.webhookBinary, cfg.dir.path("webhook"), cfg.dir.kubeconfig(), redis.Addrs(), redis.Password)
	if err != nil {
		return err
	}
	defer func() {
		logger.Print("stopping the webhook")
		if err := wh.stop(30 * time.Second); err != nil {
			logger.Printf("stopping the webhook: %v", err)
		}
	}()
	st.WebhookURL, st.CAFile = wh.baseURL, wh.caFile
	st.Logs["webhook"] = wh.logPath
	logger.Printf("webhook ready at %s (pid %d)", wh.baseURL, wh.pid())

	logger.Printf("installing the chart as release %s in namespace %s (Helm SDK)", release, releaseNamespace)
	if err := cp.CreateNamespace(ctx, releaseNamespace, map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
	}); err != nil {
		return err
	}
	res, err := chartinstall.Install(ctx, chartinstall.Options{
		Kubeconfig: cfg.dir.kubeconfig(), ChartDir: filepath.Join(cfg.root, "charts", "prometheus-metrics-proxy-hook"),
		Release: release, Namespace: releaseNamespace,
	})
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		logger.Printf("warning from the API server: %s", w)
	}
	objs, err := chartinstall.Objects(res.Release.Manifest, releaseNamespace, chartinstall.ClusterScoped)
	if err != nil {
		return err
	}
	logger.Printf("the API server accepted all %d objects of the release", len(objs))
	for _, o := range objs {
		if o.Kind == "MutatingWebhookConfiguration" {
			st.WebhookConfig = o.Name
		}
	}
	if st.WebhookConfig == "" {
		return errors.New("the release has no MutatingWebhookConfiguration")
	}
	if _, err := webhookconfig.Repoint(ctx, cp, st.WebhookConfig, wh.baseURL+"/mutate", wh.caPEM); err != nil {
		return err
	}
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	err = webhookconfig.WaitServed(waitCtx, cp, "default", admission.ContainerName)
	cancel()
	if err != nil {
		return err
	}
	logger.Printf("the MutatingWebhookConfiguration %s now calls %s/mutate", st.WebhookConfig, wh.baseURL)
	st.Release, st.ReleaseNamespace = release, releaseNamespace

	st.Phase = phaseReady
	if err := cfg.dir.writeState(st); err != nil {
		return err
	}
	logger.Print("the demo environment is ready")

	select {
	case <-ctx.Done():
	case <-wh.exited:
		return fmt.Errorf("the webhook exited (%v); last lines of its log:\n%s", wh.err, wh.logTail(20))
	}
	logger.Print("stopping (signal received)")
	st.Phase = phaseStopping
	_ = cfg.dir.writeState(st)
	return ctx.Err()
}
