package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// 9. With kube-controller-manager: a Deployment of 4 replicas on a
// semaphore of size 2 gets exactly 2 pods; the ReplicaSet's events carry
// the denial. When one pod ends (its sidecar gives the slot back as its
// last act, then the pod is gone), the ReplicaSet creates the next pod,
// which takes the freed slot.
func scenarioDeployment(t *testing.T, e *env, target *webhookTarget) {
	ns, key := "s9-deployment", "workers"
	e.served(t, ns, target, nil)
	replicas := int32(4)
	labels := map[string]string{"app": "workers"}
	template := pod("", gated(optIn(8080), key, 2, ""))
	deploy := appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "workers"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: template.Annotations},
				Spec:       template.Spec,
			},
		},
	}
	res := e.mustKctl(t, manifest(t, deploy), "create", "-n", ns, "-f", "-")
	if res.Stdout != "deployment.apps/workers created\n" {
		t.Errorf("kubectl printed %q", res.Stdout)
	}

	// The denial names the pods holding the slots: the ReplicaSet's own.
	want := regexp.MustCompile("^" + regexp.QuoteMeta("Error creating: "+fmt.Sprintf("admission webhook %q denied the request: ", webhookName)) +
		fullMessage(ns, key, 2, 2, `workers-[a-z0-9]+-\*`, `workers-[a-z0-9]+-\*`).String() + "$")
	rs := waitForEvent(t, e, ns, "ReplicaSet", "FailedCreate", want)
	t.Logf("ReplicaSet %s: %s", rs, want)

	first := workerPods(t, e, ns, labels)
	if len(first) != 2 {
		t.Fatalf("%d pods exist after the denial, want exactly 2: %v", len(first), podNames(first))
	}
	var holders []string
	for _, p := range first {
		holders = append(holders, p.Annotations[admission.AnnotationHolder])
	}
	st := e.inspect(t, ns, key, 2)
	for _, s := range st.Slots {
		if !slices.Contains(holders, s.Holder) {
			t.Fatalf("slot %d is held by %q, not by one of the pods (%v)", s.Slot, s.Holder, holders)
		}
	}

	// The first pod ends: its sidecar releases the slot through the lease
	// API, exactly as the sidecar's last act does, and the pod goes away.
	gone := first[0]
	slot, err := strconv.Atoi(gone.Annotations[admission.AnnotationSemaphoreSlot])
	if err != nil {
		t.Fatal(err)
	}
	client, err := leaseapi.NewClient(target.wh.LeaseURL(), target.wh.CAPEM(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	client.UseTokenFile(e.podToken(t, &gone))
	ctx, cancel := context.WithTimeout(t.Context(), stepTimeout)
	defer cancel()
	released, err := client.Release(ctx, leaseapi.Lease{Namespace: ns, Key: key, Slot: slot, Holder: gone.Annotations[admission.AnnotationHolder]})
	if err != nil || !released {
		t.Fatalf("releasing %s's slot: released=%v, %v", gone.Name, released, err)
	}
	e.mustKctl(t, "", "delete", "pod", gone.Name, "-n", ns, "--wait=false")

	eventually(t, stepTimeout, 200*time.Millisecond, "the ReplicaSet creates the next pod", func() error {
		now := workerPods(t, e, ns, labels)
		if len(now) != 2 {
			return fmt.Errorf("%d pods: %v", len(now), podNames(now))
		}
		for _, p := range now {
			if p.Name == gone.Name {
				return fmt.Errorf("%s is still there", gone.Name)
			}
		}
		return nil
	})
	now := workerPods(t, e, ns, labels)
	var fresh *corev1.Pod
	for i := range now {
		if now[i].Name != first[1].Name {
			fresh = &now[i]
		}
	}
	if fresh == nil {
		t.Fatalf("no new pod among %v", podNames(now))
	}
	if got := e.inspect(t, ns, key, 2).Slots[slot].Holder; got != fresh.Annotations[admission.AnnotationHolder] {
		t.Errorf("the freed slot %d is held by %q, want the new pod %s's %q", slot, got, fresh.Name, fresh.Annotations[admission.AnnotationHolder])
	}
}

func workerPods(t *testing.T, e *env, ns string, labels map[string]string) []corev1.Pod {
	t.Helper()
	res := e.mustKctl(t, "", "get", "pods", "-n", ns, "-l", "app="+labels["app"], "-o", "json")
	var list corev1.PodList
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func podNames(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

// waitForEvent watches the namespace's events (a real watch, from the
// current state on) until one about an object of kind has reason and
// message, and returns that object's name.
func waitForEvent(t *testing.T, e *env, ns, kind, reason string, message *regexp.Regexp) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), stepTimeout)
	defer cancel()
	q := url.Values{
		"watch":         {"true"},
		"fieldSelector": {"involvedObject.kind=" + kind + ",reason=" + reason},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.cp.URL+"/api/v1/namespaces/"+ns+"/events?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.cp.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("cannot watch events: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watching events: %s", resp.Status)
	}
	dec := json.NewDecoder(resp.Body)
	var seen []string
	for {
		var ev struct {
			Type   string       `json:"type"`
			Object corev1.Event `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("no %s event %q about a %s arrived (%v); seen: %q", reason, message, kind, err, seen)
		}
		if message.MatchString(ev.Object.Message) {
			return ev.Object.InvolvedObject.Name
		}
		seen = append(seen, ev.Object.Message)
	}
}
