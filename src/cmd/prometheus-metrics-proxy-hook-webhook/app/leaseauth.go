package app

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseauth"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
)

// The API server client's limits, and how long a pod found for a lease API
// call is trusted: as long as a token review, longer than the sidecar's
// renewal interval (TTL/3), so that a renewing pod costs one GET per period
// rather than one per call. The holder annotation never changes after
// admission, and a deleted pod's token stops passing its review.
const (
	kubeQPS     = 300
	kubeBurst   = 600
	podCacheTTL = leaseauth.DefaultCacheTTL
)

// kubeClient connects to the API server named by --kubeconfig, or to the
// cluster the webhook runs in.
func kubeClient(c *Config) (kubernetes.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	if c.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("the lease API checks tokens with the API server, and no connection to it is configured (set --kubeconfig, run in a cluster, or set --lease-api-auth=disabled where no pod can reach the webhook): %w", err)
	}
	// Every lease API call may need a TokenReview and a pod GET; client-go's
	// default of 5 requests/s would make its limiter the lease API's.
	cfg.QPS, cfg.Burst = kubeQPS, kubeBurst
	return kubernetes.NewForConfig(cfg)
}

// leaseAuth fills the identity part of the lease API's configuration.
// legacy tells leases granted before tokens apart; nil turns the
// transition off.
func leaseAuth(c *Config, lc *leaseserver.Config, legacy leaseserver.LegacyLeases, reg prometheus.Registerer, logger zerolog.Logger) error {
	if c.LeaseAPIAuth == LeaseAuthDisabled {
		logger.Warn().Msg("the lease API checks no tokens (--lease-api-auth=disabled): anyone who reaches the webhook can take, renew and release any slot")
		return nil
	}
	client, err := kubeClient(c)
	if err != nil {
		return err
	}
	metrics := leaseauth.NewMetrics()
	reg.MustRegister(metrics)
	verifier, err := leaseauth.New(leaseauth.Config{Client: client, Audience: c.LeaseTokenAudience, Metrics: metrics})
	if err != nil {
		return err
	}
	lc.Auth, lc.Pods = verifier, leaseserver.NewPodCache(leaseserver.PodsFromAPI{Client: client}, podCacheTTL)
	if c.LegacyHolderAuth {
		lc.Legacy = legacy
	}
	logger.Info().Str("audience", c.LeaseTokenAudience).Bool("legacy_holder_auth", lc.Legacy != nil).
		Msg("the lease API accepts only the projected token of the pod that holds a lease")
	return nil
}
