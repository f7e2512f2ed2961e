package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/reconciler"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// serviceAccountNamespace is where the kubelet mounts the pod's namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Kube is the webhook's access to the API server: one clientset for the
// process, and the reconciler, whose pod cache other parts (the lease API's
// authentication) may read.
type Kube struct {
	Client     kubernetes.Interface
	Reconciler *reconciler.Reconciler
}

// NewKube builds the clientset from --kubeconfig, or the in-cluster
// configuration when it is empty. Outside a cluster without --kubeconfig it
// answers nil: the webhook then runs without a reconciler, as local tests
// of the admission path do, and says so in the log.
func NewKube(c *Config, sem *semaphore.Client, reg prometheus.Registerer, logger zerolog.Logger) (*Kube, error) {
	restConfig, err := restConfig(c.Kubeconfig)
	if errors.Is(err, rest.ErrNotInCluster) {
		logger.Warn().Msg("no --kubeconfig and not in a cluster: the reconciler is off, and slots of pods rejected after admission are only given back by their startup timeout")
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	restConfig.UserAgent = "prometheus-metrics-proxy-hook-webhook"
	restConfig.QPS, restConfig.Burst = kubeQPS, kubeBurst
	routeKlog(logger)
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return nil, fmt.Errorf("building the Kubernetes client: %w", err)
	}
	namespace := c.LeaderElectionNamespace
	if namespace == "" {
		namespace = ownNamespace(c.Kubeconfig)
	}
	if namespace == "" {
		return nil, errors.New("the reconciler's leader election needs a namespace: set --leader-election-namespace")
	}
	metrics := reconciler.NewMetrics()
	reg.MustRegister(metrics)
	rec, err := reconciler.New(reconciler.Config{
		Client: client, Leases: sem, HolderLabel: admission.LabelHolder,
		Window: c.ReconcileWindow, Interval: c.ReconcileInterval,
		Election: reconciler.Election{Namespace: namespace, Name: c.LeaderElectionLeaseName},
		Logger:   logger.With().Str("component", "reconciler").Logger(), Metrics: metrics,
	})
	if err != nil {
		return nil, err
	}
	return &Kube{Client: client, Reconciler: rec}, nil
}

// Run runs the reconciler until ctx ends.
func (k *Kube) Run(ctx context.Context, logger zerolog.Logger) {
	if k == nil {
		return
	}
	if err := k.Reconciler.Run(ctx); err != nil && ctx.Err() == nil {
		logger.Error().Err(err).Msg("the reconciler stopped")
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("reading --kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// ownNamespace is the POD_NAMESPACE the chart sets, else the service
// account's namespace, else, for a webhook run outside the cluster, the
// namespace of the kubeconfig's current context as kubectl would use it.
func ownNamespace(kubeconfig string) string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
		return strings.TrimSpace(string(b))
	}
	if kubeconfig == "" {
		return ""
	}
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
	ns, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).Namespace()
	if err != nil {
		return ""
	}
	return ns
}
