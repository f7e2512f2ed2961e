package leaseserver_test

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseauth"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// legacySet is the LegacyLeases of a test: the holders it names are
// leases of the previous release.
type legacySet map[string]bool

func (s legacySet) IsLegacy(_ context.Context, l leaseapi.Lease) (bool, error) {
	return s[l.Holder], nil
}

// inProcess serves the lease API in the test process, checking tokens with
// the real API server, for settings the webhook's flags do not reach.
func inProcess(t testing.TB, e *kubeEnv, edit func(*leaseserver.Config)) *httptest.Server {
	t.Helper()
	verifier, err := leaseauth.New(leaseauth.Config{Client: e.kube, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	cfg := leaseserver.Config{Semaphore: e.sem, TTL: 30 * time.Second, Logger: zerolog.Nop(),
		Auth: verifier, Pods: leaseserver.PodsFromAPI{Client: e.kube}}
	edit(&cfg)
	srv := httptest.NewTLSServer(leaseserver.NewHandler(cfg))
	t.Cleanup(srv.Close)
	return srv
}

// clientOf is a sidecar's client of srv.
func clientOf(t testing.TB, srv *httptest.Server) *leaseapi.Client {
	t.Helper()
	client, err := leaseapi.NewClient(srv.URL, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// TestLegacyTransition: a sidecar of the previous release sends no token;
// its renewals and releases go through for a lease without a record only,
// and nothing takes a slot without a token.
func TestLegacyTransition(t *testing.T) {
	e, _ := newKube(t)
	ctx := context.Background()
	ns := e.namespace(t, "upgrade")
	_, old := e.member(t, ns, "old", "jobs", 3)
	_, current := e.member(t, ns, "current", "jobs", 3)
	client := clientOf(t, inProcess(t, e, func(c *leaseserver.Config) { c.Legacy = legacySet{old.Holder: true} }))

	if _, err := client.Renew(ctx, old); err != nil {
		t.Fatalf("renewal of a legacy lease without a token: %v", err)
	}
	var apiErr *leaseapi.Error
	if _, err := client.Renew(ctx, current); !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Fatalf("renewal of a recorded lease without a token: %v, want 401", err)
	}
	if _, _, err := client.Acquire(ctx, old, 3); !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Fatalf("acquire without a token, even for a legacy holder: %v, want 401", err)
	}
	if released, err := client.Release(ctx, old); err != nil || !released {
		t.Fatalf("release of a legacy lease without a token: released=%v err=%v", released, err)
	}
}

// TestPodRateLimit: a pod that calls faster than its bucket allows gets
// 429, which the client retries; another pod is not affected.
func TestPodRateLimit(t *testing.T) {
	e, _ := newKube(t)
	ctx := context.Background()
	ns := e.namespace(t, "limited")
	busyPod, busy := e.member(t, ns, "busy", "jobs", 2)
	calmPod, calm := e.member(t, ns, "calm", "jobs", 2)
	client := clientOf(t, inProcess(t, e, func(c *leaseserver.Config) { c.PodRate, c.PodBurst = 0.001, 3 }))
	busyFile, calmFile := t.TempDir()+"/busy", t.TempDir()+"/calm"
	writeFile(t, busyFile, e.token(t, busyPod, audience))
	writeFile(t, calmFile, e.token(t, calmPod, audience))

	client.UseTokenFile(busyFile)
	for i := range 3 {
		if _, err := client.Renew(ctx, busy); err != nil {
			t.Fatalf("renewal %d within the burst: %v", i, err)
		}
	}
	_, err := client.Renew(ctx, busy)
	var apiErr *leaseapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusTooManyRequests || apiErr.Cause != leaseserver.CauseRateLimited || !leaseapi.Retryable(err) {
		t.Fatalf("renewal past the burst: %v, want a retryable 429", err)
	}
	client.UseTokenFile(calmFile)
	if _, err := client.Renew(ctx, calm); err != nil {
		t.Fatalf("another pod's renewal: %v", err)
	}
}

// TestAPIServerUnreachable: when the token cannot be checked, the answer is
// a 503 the sidecar retries, never a refusal that ends its lease, and
// never a pass.
func TestAPIServerUnreachable(t *testing.T) {
	e, _ := newKube(t)
	ns := e.namespace(t, "unreachable")
	p, l := e.member(t, ns, "cut-off", "jobs", 1)
	token := e.token(t, p, audience)
	port, err := localproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	gone, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:" + strconv.Itoa(port), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := leaseauth.New(leaseauth.Config{Client: gone, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	client := clientOf(t, inProcess(t, e, func(c *leaseserver.Config) { c.Auth = verifier }))
	file := t.TempDir() + "/token"
	writeFile(t, file, token)
	client.UseTokenFile(file)
	_, err = client.Release(context.Background(), l)
	var apiErr *leaseapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable || !leaseapi.Retryable(err) {
		t.Fatalf("release while the API server is unreachable: %v, want a retryable 503", err)
	}
	if h := e.slots(t, l.Name(), 1); h[0] != l.Holder {
		t.Fatalf("the slot is held by %q, want the pod's lease untouched", h[0])
	}
}
