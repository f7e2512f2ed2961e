package leaseserver_test

// The attacks of issue 14, against a real webhook process on three real
// Redis nodes: a caller that is not the pod holding a lease must not be
// able to take, renew or release a slot.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

type attackEnv struct {
	wh  *webhooktest.Webhook
	sem *semaphore.Client
}

func newAttackEnv(t *testing.T, args ...string) *attackEnv {
	t.Helper()
	redis := redistest.StartT(t, 3)
	sem, err := semaphore.New(semaphore.Config{Addrs: redis.Addrs(), Password: redis.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password, Args: args})
	return &attackEnv{wh: wh, sem: sem}
}

// post sends body to path as an attacker would with curl: no credentials.
func (e *attackEnv) post(t *testing.T, path string, body any) (int, leaseapi.ErrorResponse) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.wh.Client().Post(e.wh.LeaseURL()+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	var er leaseapi.ErrorResponse
	_ = json.Unmarshal(answer, &er)
	return resp.StatusCode, er
}

func (e *attackEnv) holders(t *testing.T, name string, size int) []string {
	t.Helper()
	st, err := e.sem.Inspect(context.Background(), name, size)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, sl := range st.Slots {
		out = append(out, sl.Holder)
	}
	return out
}

// TestAttackAcquireWithoutToken: two anonymous acquire calls must not fill
// another namespace's semaphore.
func TestAttackAcquireWithoutToken(t *testing.T) {
	e := newAttackEnv(t)
	for i, holder := range []string{strings.Repeat("a1", 16), strings.Repeat("b2", 16)} {
		req := leaseapi.AcquireRequest{Lease: leaseapi.Lease{Namespace: "victim", Key: "jobs", Holder: holder}, Size: 2}
		code, er := e.post(t, leaseapi.AcquirePath, req)
		if code != http.StatusUnauthorized || er.Reason != leaseapi.ReasonUnauthorized {
			t.Errorf("anonymous acquire %d answered %d %s %q; want 401 %s", i, code, er.Reason, er.Error, leaseapi.ReasonUnauthorized)
		}
	}
	for slot, h := range e.holders(t, "victim/jobs", 2) {
		if h != "" {
			t.Errorf("slot %d of victim/jobs is held by an anonymous caller", slot)
		}
	}
}

// TestAttackReleaseWithHolderFromAnnotations: the holder id of another pod,
// read from its annotations, must neither renew nor release its slot.
func TestAttackReleaseWithHolderFromAnnotations(t *testing.T) {
	e := newAttackEnv(t)
	ctx := context.Background()
	got, err := e.sem.Acquire(ctx, "victim/jobs", 1, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	stolen := leaseapi.Lease{Namespace: "victim", Key: "jobs", Slot: got.Slot, Holder: got.Holder}
	for _, path := range []string{leaseapi.RenewPath, leaseapi.ReleasePath} {
		code, er := e.post(t, path, stolen)
		if code != http.StatusUnauthorized || er.Reason != leaseapi.ReasonUnauthorized {
			t.Errorf("%s with a stolen holder id answered %d %s %q; want 401 %s", path, code, er.Reason, er.Error, leaseapi.ReasonUnauthorized)
		}
	}
	if h := e.holders(t, "victim/jobs", 1); h[0] != got.Holder {
		t.Fatalf("the victim's slot is held by %q after the attack, want the victim", h[0])
	}
}
