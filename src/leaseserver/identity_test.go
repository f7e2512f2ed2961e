package leaseserver_test

// Issue 14, "How it is verified": real tokens from the TokenRequest API,
// bound to real pod objects, against a real webhook process.

import (
	"context"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

func TestOnlyTheHoldingPodActsOnItsLease(t *testing.T) {
	e := newKubeEnv(t)
	ctx := context.Background()
	ns, other := e.namespace(t, "victim"), e.namespace(t, "attacker")
	victimPod, victim := e.member(t, ns, "victim", "jobs", 2)
	neighbourPod, _ := e.member(t, ns, "neighbour", "jobs", 2)
	outsiderPod, _ := e.member(t, other, "outsider", "jobs", 2)
	bystanderPod := e.pod(t, ns, "bystander", map[string]string{admission.AnnotationSemaphoreKey: "jobs", admission.AnnotationSemaphoreSize: "2"})
	goner, _ := e.member(t, ns, "goner", "spare", 1)
	gonerToken := e.token(t, goner, audience)
	if err := e.kube.CoreV1().Pods(ns).Delete(ctx, goner.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sa, err := e.kube.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bound := kubetest.BoundPod{Namespace: ns, ServiceAccount: "default", ServiceAccountUID: string(sa.UID), Name: victimPod.Name, UID: string(victimPod.UID)}
	expired, err := e.cp.SignServiceAccountToken(bound, audience, time.Now().Add(-time.Hour), time.Now().Add(-50*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	// Minted the same way but still valid, it is accepted: the expired one
	// is refused for its expiry alone.
	minted, err := e.cp.SignServiceAccountToken(bound, audience, time.Now().Add(-time.Minute), time.Now().Add(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	before := e.slots(t, victim.Name(), 2)
	full := leaseapi.AcquireRequest{Lease: leaseapi.Lease{Namespace: ns, Key: "jobs", Holder: victim.Holder}, Size: 2}

	cases := []struct {
		name   string
		token  string
		path   string
		body   any
		status int
		cause  string
	}{
		{"no token acquires", "", leaseapi.AcquirePath, full, 401, leaseserver.CauseMissingToken},
		{"no token releases", "", leaseapi.ReleasePath, victim, 401, leaseserver.CauseMissingToken},
		{"another namespace acquires", e.token(t, outsiderPod, audience), leaseapi.AcquirePath, full, 403, leaseserver.CauseOtherNamespace},
		{"another namespace releases", e.token(t, outsiderPod, audience), leaseapi.ReleasePath, victim, 403, leaseserver.CauseOtherNamespace},
		{"a pod that did not opt in acquires", e.token(t, bystanderPod, audience), leaseapi.AcquirePath, full, 403, leaseserver.CauseNotOptedIn},
		{"wrong audience renews", e.token(t, victimPod, "kubernetes"), leaseapi.RenewPath, victim, 401, leaseserver.CauseInvalidToken},
		{"expired token renews", expired, leaseapi.RenewPath, victim, 401, leaseserver.CauseInvalidToken},
		{"a deleted pod's token acquires", gonerToken, leaseapi.AcquirePath, full, 401, leaseserver.CauseInvalidToken},
		{"a neighbour renews with the victim's holder", e.token(t, neighbourPod, audience), leaseapi.RenewPath, victim, 403, leaseserver.CauseOtherHolder},
		{"a neighbour releases with the victim's holder", e.token(t, neighbourPod, audience), leaseapi.ReleasePath, victim, 403, leaseserver.CauseOtherHolder},
		{"a neighbour acquires with the victim's holder", e.token(t, neighbourPod, audience), leaseapi.AcquirePath, full, 403, leaseserver.CauseOtherHolder},
		{"the victim asks for another semaphore", e.token(t, victimPod, audience), leaseapi.AcquirePath,
			leaseapi.AcquireRequest{Lease: leaseapi.Lease{Namespace: ns, Key: "other", Holder: victim.Holder}, Size: 2}, 403, leaseserver.CauseOtherSemaphore},
		{"the victim asks for another size", e.token(t, victimPod, audience), leaseapi.AcquirePath,
			leaseapi.AcquireRequest{Lease: victim, Size: 3}, 403, leaseserver.CauseOtherSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, er := e.call(t, tc.path, tc.token, tc.body)
			if code != tc.status || er.Cause != tc.cause || er.Error == "" || er.Error[len(er.Error)-1] != '.' {
				t.Fatalf("answered %d %s/%s %q; want %d with cause %s and a sentence", code, er.Reason, er.Cause, er.Error, tc.status, tc.cause)
			}
			if after := e.slots(t, victim.Name(), 2); !slices.Equal(after, before) {
				t.Fatalf("the slots of %s changed from %q to %q", victim.Name(), before, after)
			}
		})
	}

	// The victim's own sidecar keeps its lease, with the token it has and
	// with the one a kubelet rotation would bring.
	client, err := leaseapi.NewClient(e.wh.LeaseURL(), e.wh.CAPEM(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	file := t.TempDir() + "/token"
	client.UseTokenFile(file)
	for i, token := range []string{e.token(t, victimPod, audience), e.token(t, victimPod, audience), minted} {
		writeFile(t, file, token)
		if _, err := client.Renew(ctx, victim); err != nil {
			t.Fatalf("the victim's renewal with token %d: %v", i, err)
		}
	}
	if released, err := client.Release(ctx, victim); err != nil || !released {
		t.Fatalf("the victim's release: released=%v err=%v", released, err)
	}
	if h := e.slots(t, victim.Name(), 2); slices.Contains(h, victim.Holder) {
		t.Fatalf("the victim's slot is still held after its release: %q", h)
	}
}
