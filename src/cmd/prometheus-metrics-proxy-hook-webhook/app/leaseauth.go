package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseauth"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// The API server client's limits: every lease API call may need a
// TokenReview and a pod GET, and client-go's default of 5 requests/s would
// make its limiter the lease API's.
const (
	kubeQPS   = 300
	kubeBurst = 600
)

// podCacheTTL is how long a pod found for a lease API call is trusted when
// the informer does not have it: as long as a token review, longer than the
// sidecar's renewal interval (TTL/3). The holder annotation never changes
// after admission, and a deleted pod's token stops passing its review.
const podCacheTTL = leaseauth.DefaultCacheTTL

// leaseAuth fills the identity part of the lease API's configuration from
// the webhook's one API server client.
func leaseAuth(c *Config, lc *leaseserver.Config, kube *Kube, sem *semaphore.Client, reg prometheus.Registerer, logger zerolog.Logger) error {
	if c.LeaseAPIAuth == LeaseAuthDisabled {
		logger.Warn().Msg("The lease API checks no tokens (--lease-api-auth=disabled): anyone who reaches the webhook can take, renew and release any slot.")
		return nil
	}
	if kube == nil {
		return errors.New("the lease API checks tokens with the API server, and no connection to it is configured: set --kubeconfig, run in a cluster, or set --lease-api-auth=disabled where no pod can reach the webhook")
	}
	metrics := leaseauth.NewMetrics()
	reg.MustRegister(metrics)
	verifier, err := leaseauth.New(leaseauth.Config{Client: kube.Client, Audience: c.LeaseTokenAudience, Metrics: metrics})
	if err != nil {
		return err
	}
	lc.Auth, lc.Pods = verifier, leaseserver.NewPodCache(kube.Reconciler, podCacheTTL)
	if c.LegacyHolderAuth {
		lc.Legacy = recordlessLeases{sem}
	}
	logger.Info().Str("audience", c.LeaseTokenAudience).Bool("legacy_holder_auth", lc.Legacy != nil).
		Msg("The lease API accepts only the projected token of the pod that holds a lease.")
	return nil
}

// recordlessLeases tells which leases a request without a token may renew
// or release: one granted by a release before lease records (and tokens)
// existed, held and without a record, and one that is not held at all, so
// that a previous release's sidecar whose lease was lost hears that it was
// lost (the semaphore answers so and changes nothing) instead of being
// refused for its missing token forever.
type recordlessLeases struct{ sem *semaphore.Client }

func (r recordlessLeases) IsLegacy(ctx context.Context, l leaseapi.Lease) (bool, error) {
	held, err := r.sem.Leases(ctx, l.Name(), l.Slot+1)
	if err != nil {
		return false, fmt.Errorf("looking up the lease's record: %w", err)
	}
	for _, h := range held {
		if h.Slot == l.Slot && h.Holder == l.Holder {
			return h.Record == nil, nil
		}
	}
	return true, nil
}
