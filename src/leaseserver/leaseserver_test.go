package leaseserver_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

type env struct {
	sem     *semaphore.Client
	cluster *redistest.Cluster
	srv     *httptest.Server
	client  *leaseapi.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cluster := redistest.StartT(t, 3)
	sem, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	srv := httptest.NewTLSServer(leaseserver.NewHandler(leaseserver.Config{
		Semaphore: sem, TTL: 30 * time.Second, Logger: zerolog.Nop(), Metrics: leaseserver.NewMetrics(),
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	client, err := leaseapi.NewClient(srv.URL, ca, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return &env{sem: sem, cluster: cluster, srv: srv, client: client}
}

func (e *env) acquire(t *testing.T, ns, key string, size int) leaseapi.Lease {
	t.Helper()
	l, err := e.sem.Acquire(context.Background(), leaseapi.SemaphoreName(ns, key), size, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return leaseapi.Lease{Namespace: ns, Key: key, Slot: l.Slot, Holder: l.Holder}
}

func TestRenewReleaseAcquire(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	l := e.acquire(t, "team-a", "batch", 1)

	ttl, err := e.client.Renew(ctx, l)
	if err != nil || ttl != 30*time.Second {
		t.Fatalf("renew: ttl %s, err %v; want 30s and no error", ttl, err)
	}
	// The renewal answers once a quorum renewed; the last node follows.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := e.sem.Inspect(ctx, l.Name(), 1)
		if err != nil {
			t.Fatal(err)
		}
		renewed := 0
		for _, d := range st.Slots[0].TTLs {
			if d <= 30*time.Second && d > 20*time.Second {
				renewed++
			}
		}
		if renewed == len(st.Slots[0].TTLs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TTLs %v after renewal, want the 30s lease TTL instead of the 5m startup lease on every node", st.Slots[0].TTLs)
		}
		time.Sleep(5 * time.Millisecond)
	}

	other := l
	other.Holder = strings.Repeat("ab", 16)
	if _, err := e.client.Renew(ctx, other); !errors.Is(err, leaseapi.ErrConflict) {
		t.Fatalf("renew with another holder id: %v, want a 409 Conflict", err)
	}
	if released, err := e.client.Release(ctx, other); err != nil || released {
		t.Fatalf("release with another holder id: released=%v err=%v; want nothing released", released, err)
	}
	if _, _, err := e.client.Acquire(ctx, other, 1); !errors.Is(err, leaseapi.ErrFull) {
		t.Fatalf("acquire of a full semaphore: %v, want a 409 Full", err)
	}

	if released, err := e.client.Release(ctx, l); err != nil || !released {
		t.Fatalf("release: released=%v err=%v; want released", released, err)
	}
	if released, err := e.client.Release(ctx, l); err != nil || released {
		t.Fatalf("replayed release: released=%v err=%v; want an idempotent no-op", released, err)
	}
	if _, err := e.client.Renew(ctx, l); !errors.Is(err, leaseapi.ErrNotFound) {
		t.Fatalf("renew after release: %v, want a 404", err)
	}

	// A sidecar whose lease was lost takes a slot again with its own id.
	got, ttl, err := e.client.Acquire(ctx, l, 1)
	if err != nil || got.Holder != l.Holder || got.Slot != 0 || ttl != 30*time.Second {
		t.Fatalf("acquire again: %+v ttl %s err %v", got, ttl, err)
	}
	again, _, err := e.client.Acquire(ctx, l, 1)
	if err != nil || again != got {
		t.Fatalf("repeated acquire with the same holder: %+v %v; want the same slot (idempotent)", again, err)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	holder := strings.Repeat("0f", 16)
	cases := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		status      int
		message     string
	}{
		{"get", http.MethodGet, leaseapi.RenewPath, "application/json", "", 405, "Method GET is not allowed"},
		{"content type", http.MethodPost, leaseapi.RenewPath, "text/plain", "{}", 415, `Content type "text/plain" is not supported`},
		{"malformed", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":`, 400, "not a valid lease request"},
		{"unknown field", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"a","extra":1}`, 400, `unknown field "extra"`},
		{"trailing data", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"a","key":"k","slot":0,"holder":"` + holder + `"} {}`, 400, "data after the JSON object"},
		{"huge", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"` + strings.Repeat("a", 8000) + `"}`, 413, "exceeds 4096 bytes"},
		{"bad namespace", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"A_B","key":"k","slot":0,"holder":"` + holder + `"}`, 400, `The namespace "A_B" must be a DNS label`},
		{"bad key", http.MethodPost, leaseapi.ReleasePath, "application/json", `{"namespace":"a","key":"-k","slot":0,"holder":"` + holder + `"}`, 400, `The key "-k" must be 1 to 63 characters`},
		{"bad slot", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"a","key":"k","slot":1024,"holder":"` + holder + `"}`, 400, "slot 1024 must be from 0 to 1023"},
		{"negative slot", http.MethodPost, leaseapi.ReleasePath, "application/json", `{"namespace":"a","key":"k","slot":-1,"holder":"` + holder + `"}`, 400, "slot -1 must be from 0 to 1023"},
		{"bad holder", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"a","key":"k","slot":0,"holder":"XYZ"}`, 400, `The holder "XYZ" must be 32 lowercase hex digits`},
		{"bad size", http.MethodPost, leaseapi.AcquirePath, "application/json", `{"namespace":"a","key":"k","slot":0,"holder":"` + holder + `","size":0}`, 400, "size 0 must be from 1 to 1024"},
		{"unknown lease", http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"a","key":"k","slot":3,"holder":"` + holder + `"}`, 404, "is not held on a quorum of nodes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, e.srv.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", tc.contentType)
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var e leaseapi.ErrorResponse
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("answer %q is not an error object: %v", body, err)
			}
			if resp.StatusCode != tc.status || !strings.Contains(e.Error, tc.message) || !strings.HasSuffix(e.Error, ".") {
				t.Fatalf("got %d %q, want %d with %q, as a sentence", resp.StatusCode, e.Error, tc.status, tc.message)
			}
		})
	}
}

func TestNoQuorumIsRetryable(t *testing.T) {
	e := newEnv(t)
	l := e.acquire(t, "team-a", "batch", 2)
	e.cluster.Nodes[0].Kill()
	e.cluster.Nodes[1].Kill()
	_, err := e.client.Renew(context.Background(), l)
	var apiErr *leaseapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable || !leaseapi.Retryable(err) {
		t.Fatalf("renew without quorum: %v, want a retryable 503", err)
	}
	if !strings.Contains(apiErr.Message, "No Redis quorum for renew: 2 of 3 nodes failed") {
		t.Fatalf("message %q does not say which nodes failed", apiErr.Message)
	}
}

func TestMaxSizeAgrees(t *testing.T) {
	if leaseapi.MaxSize != semaphore.MaxSize {
		t.Fatalf("leaseapi.MaxSize %d differs from semaphore.MaxSize %d", leaseapi.MaxSize, semaphore.MaxSize)
	}
}
