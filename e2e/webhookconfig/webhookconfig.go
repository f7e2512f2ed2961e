// Package webhookconfig points an installed MutatingWebhookConfiguration at
// a webhook process outside the cluster, as envtest-style suites do: the
// chart's Service reference becomes `clientConfig.url` with the CA bundle of
// the process' certificate, and everything else the chart wrote
// (namespaceSelector, matchConditions, failurePolicy, sideEffects, timeouts)
// stays as it is, so the API server applies the chart's real configuration.
package webhookconfig

import (
	"context"
	"fmt"
	"net/http"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

const path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"

// Get reads a MutatingWebhookConfiguration.
func Get(ctx context.Context, cp *kubetest.ControlPlane, name string) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := cp.Do(ctx, http.MethodGet, path+name, nil, &mwc); err != nil {
		return nil, fmt.Errorf("cannot read the MutatingWebhookConfiguration %s: %w", name, err)
	}
	return &mwc, nil
}

// Repoint makes every webhook of the configuration call url (e.g.
// https://127.0.0.1:PORT/mutate) and trust caPEM, and returns the updated
// object. A write that races with another writer is retried on the fresh
// object.
func Repoint(ctx context.Context, cp *kubetest.ControlPlane, name, url string, caPEM []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	for {
		mwc, err := Get(ctx, cp, name)
		if err != nil {
			return nil, err
		}
		if len(mwc.Webhooks) == 0 {
			return nil, fmt.Errorf("the MutatingWebhookConfiguration %s has no webhooks", name)
		}
		for i := range mwc.Webhooks {
			u := url
			mwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &u, CABundle: caPEM}
		}
		var updated admissionregistrationv1.MutatingWebhookConfiguration
		err = cp.Do(ctx, http.MethodPut, path+name, mwc, &updated)
		if err == nil {
			return &updated, nil
		}
		if !kubetest.IsAlreadyExists(err) { // 409: a conflicting resourceVersion
			return nil, fmt.Errorf("cannot update the MutatingWebhookConfiguration %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cannot update the MutatingWebhookConfiguration %s: %w", name, context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probeAnnotation opts the probe pod in; it names no semaphore, so a probe
// never takes a slot (and it is a dry run anyway).
const probeAnnotation = "prometheus-metrics-proxy-hook.kaidotio.github.io/prometheus-metrics-proxy"

// WaitServed waits until the API server sends the pods of namespace to the
// webhook: the API server picks up a changed configuration a moment after
// the write, so a test that creates a pod right after Repoint could meet the
// old one. It sends dry-run creations of an opted-in pod (the webhook's
// sideEffects allow them, and a dry run takes no slot) until one comes back
// with the injected container, or ctx ends.
func WaitServed(ctx context.Context, cp *kubetest.ControlPlane, namespace, container string) error {
	pod := map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata": map[string]any{
			"generateName": "webhook-probe-",
			"annotations":  map[string]string{probeAnnotation: "true", "prometheus.io/port": "8080"},
		},
		// Restricted, so that the probe also passes in namespaces that
		// enforce the restricted Pod Security Standard.
		"spec": map[string]any{
			"securityContext": map[string]any{
				"runAsNonRoot":   true,
				"seccompProfile": map[string]any{"type": "RuntimeDefault"},
			},
			"containers": []map[string]any{{
				"name":  "app",
				"image": "registry.k8s.io/pause:3.10",
				"securityContext": map[string]any{
					"allowPrivilegeEscalation": false,
					"capabilities":             map[string]any{"drop": []string{"ALL"}},
				},
			}},
		},
	}
	var last error
	for {
		var created struct {
			Spec struct {
				Containers []struct {
					Name string `json:"name"`
				} `json:"containers"`
				// A native sidecar is an init container.
				InitContainers []struct {
					Name string `json:"name"`
				} `json:"initContainers"`
			} `json:"spec"`
		}
		err := cp.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+namespace+"/pods?dryRun=All", pod, &created)
		if err == nil {
			for _, c := range append(created.Spec.Containers, created.Spec.InitContainers...) {
				if c.Name == container {
					return nil
				}
			}
			err = fmt.Errorf("the pod came back without the container %q", container)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("the webhook does not serve namespace %s yet (last probe: %v): %w", namespace, last, context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
