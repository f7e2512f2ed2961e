package leaseserver_test

// The attacks of issue 14, against a real webhook process on three real
// Redis nodes, with the real API server: a caller that is not the pod
// holding a lease must not be able to take, renew or release a slot.

import (
	"net/http"
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// TestAttackAcquireWithoutToken: two anonymous acquire calls must not fill
// another namespace's semaphore.
func TestAttackAcquireWithoutToken(t *testing.T) {
	e := newKubeEnv(t)
	for i, holder := range []string{strings.Repeat("a1", 16), strings.Repeat("b2", 16)} {
		req := leaseapi.AcquireRequest{Lease: leaseapi.Lease{Namespace: "victim", Key: "jobs", Holder: holder}, Size: 2}
		code, er := e.call(t, leaseapi.AcquirePath, "", req)
		if code != http.StatusUnauthorized || er.Reason != leaseapi.ReasonUnauthorized {
			t.Errorf("anonymous acquire %d answered %d %s %q; want 401 %s", i, code, er.Reason, er.Error, leaseapi.ReasonUnauthorized)
		}
	}
	for slot, h := range e.slots(t, "victim/jobs", 2) {
		if h != "" {
			t.Errorf("slot %d of victim/jobs is held by an anonymous caller", slot)
		}
	}
}

// TestAttackReleaseWithHolderFromAnnotations: the holder id of another pod,
// read from its annotations, must neither renew nor release its slot.
func TestAttackReleaseWithHolderFromAnnotations(t *testing.T) {
	e := newKubeEnv(t)
	got := e.admit(t, "victim/jobs", 1, "victim-pod")
	stolen := leaseapi.Lease{Namespace: "victim", Key: "jobs", Slot: got.Slot, Holder: got.Holder}
	for _, path := range []string{leaseapi.RenewPath, leaseapi.ReleasePath} {
		code, er := e.call(t, path, "", stolen)
		if code != http.StatusUnauthorized || er.Reason != leaseapi.ReasonUnauthorized {
			t.Errorf("%s with a stolen holder id answered %d %s %q; want 401 %s", path, code, er.Reason, er.Error, leaseapi.ReasonUnauthorized)
		}
	}
	if h := e.slots(t, "victim/jobs", 1); h[0] != got.Holder {
		t.Fatalf("the victim's slot is held by %q after the attack, want the victim", h[0])
	}
}
