package reconciler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Election is where the replicas agree on one leader: a coordination.k8s.io
// Lease.
type Election struct {
	Namespace string
	Name      string
	// Identity names this replica in the Lease; empty means the host name
	// with a random suffix.
	Identity string
	// The client-go defaults (15 s, 10 s, 2 s) when zero.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

func (e *Election) complete() error {
	if e.Namespace == "" || e.Name == "" {
		return errors.New("reconciler: the leader election Lease needs a namespace and a name")
	}
	if e.Identity == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		e.Identity = host + "_" + hex.EncodeToString(b[:])
	}
	if e.LeaseDuration <= 0 {
		e.LeaseDuration = 15 * time.Second
	}
	if e.RenewDeadline <= 0 {
		e.RenewDeadline = 10 * time.Second
	}
	if e.RetryPeriod <= 0 {
		e.RetryPeriod = 2 * time.Second
	}
	return nil
}

// elect runs lead whenever this replica holds the Lease, until ctx ends.
// Losing the Lease cancels lead's context; a release in flight then is
// harmless, since releases are compare-and-delete.
func (r *Reconciler) elect(ctx context.Context, lead func(context.Context)) error {
	e := r.cfg.Election
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: e.Namespace, Name: e.Name},
		Client:     r.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	log := r.cfg.Logger.With().Str("lease", e.Namespace+"/"+e.Name).Str("identity", e.Identity).Logger()
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: e.LeaseDuration, RenewDeadline: e.RenewDeadline, RetryPeriod: e.RetryPeriod,
			ReleaseOnCancel: true, Name: e.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					log.Info().Msg("this replica leads the reconciler")
					lead(ctx)
				},
				OnStoppedLeading: func() { log.Info().Msg("this replica no longer leads the reconciler") },
			},
		})
		if err != nil {
			return err
		}
		elector.Run(ctx)
	}
	return nil
}
