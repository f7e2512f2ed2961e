package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/chartnode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
)

// redisVolumes is what the chart's default persistence claims: one volume
// per Redis pod, of the size values.yaml names.
const (
	redisVolumes    = 3
	redisVolumeSize = "1Gi"
)

// runNode builds the images, starts the registry and the node, installs the
// chart from the registry, marks the state ready, waits for ctx and stops
// everything again.
func runNode(ctx context.Context, cfg config, st *state, logger *log.Logger) error {
	// A daemon that was killed left its node's pods, mounts and chains;
	// they must go before its directories. A node that holds the machine
	// now swept them when it started.
	var busy *kubenode.BusyError
	if swept, err := kubenode.SweepAfter(cfg.nodeOwner); err != nil && !errors.As(err, &busy) {
		return fmt.Errorf("cannot clean up after the demo's earlier node: %w", err)
	} else if swept {
		logger.Print("removed what an earlier demo's node left behind")
	}
	if err := cleanLeftovers(cfg); err != nil {
		return err
	}
	for _, sub := range []string{"manifests", "sidecars", "runs"} {
		if err := os.RemoveAll(cfg.dir.path(sub)); err != nil {
			return fmt.Errorf("cannot clean %s: %w", cfg.dir.path(sub), err)
		}
	}
	tmp := cfg.dir.nodeTmp()
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", tmp, err)
	}
	defer os.RemoveAll(tmp) // after the node's and the registry's stop, deferred below
	if err := os.Setenv("TMPDIR", tmp); err != nil {
		return err
	}

	// Before the image builds: the node's lock is only taken by Start. A
	// demo run by a test waits for other tests' nodes instead, as they
	// wait for each other.
	if err := kubenode.Holder(); err != nil && cfg.nodeOwner == kubenode.DemoOwner {
		return nodeBusy(err)
	}
	startCtx, cancel := context.WithTimeout(ctx, cfg.startTimeout)
	defer cancel()
	c, err := chartnode.Start(startCtx, chartnode.Options{Owner: cfg.nodeOwner, Logf: logger.Printf})
	if err != nil {
		return nodeBusy(fmt.Errorf("cannot start the node: %w", err))
	}
	defer func() {
		logger.Print("stopping the node (the pods, the NetworkPolicy enforcer, CoreDNS, kube-proxy, kube-scheduler, the kubelet, containerd, the control plane) and the registry")
		if err := c.Stop(); err != nil {
			logger.Printf("stopping the node: %v", err)
		}
	}()
	if err := describeNode(c, cfg, st); err != nil {
		return err
	}

	r := chartnode.NewRelease(release)
	// Nothing provisions volumes on the node: the Redis pods' claims bind
	// to local volumes made ahead, as an administrator would. They go with
	// the node's directory at down.
	if _, err := c.Node.CreateLocalVolumes(startCtx, r.Name+"-redis-data", redisVolumes, redisVolumeSize); err != nil {
		return err
	}
	args, err := c.InstallArgs(r)
	if err != nil {
		return err
	}
	st.HelmInstall = "helm " + displayHelmArgs(args)
	logger.Printf("creating the namespace %s and the Secret %s with a serving certificate from a throw-away CA (cert-manager does not run here)", r.Namespace, r.TLSSecret())
	logger.Printf("$ %s", st.HelmInstall)
	started := time.Now()
	out, err := c.Install(startCtx, r)
	if err != nil {
		return err
	}
	// Up to the chart's NOTES, which are for a user's cluster.
	notes, _, _ := strings.Cut(out, "NOTES:")
	for _, line := range strings.Split(strings.TrimSpace(notes), "\n") {
		logger.Printf("  %s", line)
	}
	logger.Print("waiting for the webhook's 2 and Redis' 3 pods to be Ready")
	if err := c.WaitReady(startCtx, r, true, func(s string) { logger.Print(s) }); err != nil {
		return err
	}
	logger.Printf("the release %s runs: installed and Ready in %s", r.Name, time.Since(started).Round(100*time.Millisecond))
	st.Release, st.ReleaseNamespace = r.Name, r.Namespace
	st.WebhookConfig = r.Fullname

	st.Phase = phaseReady
	if err := cfg.dir.writeState(st); err != nil {
		return err
	}
	logger.Print("the demo environment is ready")
	<-ctx.Done()
	logger.Print("stopping (signal received)")
	st.Phase = phaseStopping
	_ = cfg.dir.writeState(st)
	return ctx.Err()
}

// describeNode records the node in the state: its kubeconfig (copied to a
// fixed path), addresses and logs.
func describeNode(c *chartnode.Cluster, cfg config, st *state) error {
	kubeconfig, err := os.ReadFile(c.Node.KubeconfigPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(cfg.dir.kubeconfig(), kubeconfig, 0o600); err != nil {
		return fmt.Errorf("cannot write the kubeconfig: %w", err)
	}
	st.Kubeconfig, st.APIServer = cfg.dir.kubeconfig(), c.Node.URL
	st.NodeIP, st.Registry = c.Node.IP, c.Registry.Host
	st.NetworkPolicyEnforcer = c.Node.NetworkPolicyEnforcer
	st.NetworkPoliciesUnenforced = c.Node.NetworkPoliciesUnenforced
	st.Chart = c.Chart.URL + ":" + c.Chart.Version
	for _, name := range []string{"kubelet", "containerd", "kube-proxy", "kube-scheduler"} {
		st.Logs[name] = filepath.Join(c.Node.Dir, name, name+".log")
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		st.Logs[name] = filepath.Join(c.Node.ControlPlane.Dir, name, name+".log")
	}
	return nil
}

// displayHelmArgs quotes helm's arguments for display, with the CA bundle
// shortened and the kubeconfig left out (the user's KUBECONFIG points at
// the demo's).
func displayHelmArgs(args []string) string {
	var shown []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--kubeconfig" && i+1 < len(args):
			i++
			continue
		case strings.HasPrefix(a, "tls.caBundle="):
			a = "tls.caBundle=$(base64 -w0 ca.crt)"
		}
		shown = append(shown, rel(a))
	}
	return shellJoin(shown)
}

// nodeBusy says what to do when another node holds the machine.
func nodeBusy(err error) error {
	var busy *kubenode.BusyError
	if errors.As(err, &busy) {
		return fmt.Errorf("another node (%s, pid %d) holds this machine, and only one node can run at a time. "+
			"Run `make demo` again once it has stopped, or `make demo DEMO_MODE=control-plane` for the walkthrough without a node", busy.Owner, busy.PID)
	}
	return err
}
