package leaseserver_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseauth"
)

// TestTokenCache: a token is reviewed once per cache period, a refused one
// too, and with the cache off on every call.
func TestTokenCache(t *testing.T) {
	e := newKubeEnv(t)
	ns := e.namespace(t, "cache")
	p, _ := e.member(t, ns, "cached", "jobs", 1)
	good, bad := e.token(t, p, audience), e.token(t, p, "kubernetes")
	cases := []struct {
		name    string
		ttl     int
		reviews float64
	}{{"cached", 0, 2}, {"uncached", -1, 6}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := leaseauth.NewMetrics()
			cfg := leaseauth.Config{Client: e.kube, Audience: audience, Metrics: m}
			if tc.ttl < 0 {
				cfg.CacheTTL = -1
			}
			v, err := leaseauth.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				id, err := v.Verify(context.Background(), good)
				if err != nil || id.PodUID != string(p.UID) || id.Namespace != ns || id.PodName != p.Name {
					t.Fatalf("Verify of the pod's token: %+v %v", id, err)
				}
				var refused *leaseauth.Error
				if _, err := v.Verify(context.Background(), bad); !errors.As(err, &refused) || refused.Cause != leaseauth.CauseInvalid {
					t.Fatalf("Verify of a token for another audience: %v", err)
				}
			}
			if got := testutil.ToFloat64(m.Reviews()); got != tc.reviews {
				t.Fatalf("%v TokenReviews for 3 checks of 2 tokens, want %v", got, tc.reviews)
			}
		})
	}
}
