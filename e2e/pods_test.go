package e2e

import (
	"encoding/json"
	"maps"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
)

// pod is a Pod manifest that passes the restricted Pod Security Standard on
// its own, so that any refusal a test sees is the webhook's (or, where a
// test wants it, PodSecurity's about what the webhook added).
func pod(name string, annotations map[string]string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	no := false
	yes := true
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: maps.Clone(annotations)},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &yes,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.k8s.io/pause:3.10",
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

// manifest is the JSON kubectl reads from stdin.
func manifest(t *testing.T, obj any) string {
	t.Helper()
	data, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// optIn are the annotations of a pod that opts in with its metrics on port.
func optIn(port int) map[string]string {
	return map[string]string{
		admission.AnnotationOptIn: "true",
		admission.AnnotationPort:  strconv.Itoa(port),
	}
}

// gated adds a semaphore to the annotations; an empty timeout keeps the
// default.
func gated(a map[string]string, key string, size int, startupTimeout string) map[string]string {
	out := maps.Clone(a)
	out[admission.AnnotationSemaphoreKey] = key
	out[admission.AnnotationSemaphoreSize] = strconv.Itoa(size)
	if startupTimeout != "" {
		out[admission.AnnotationStartupTimeout] = startupTimeout
	}
	return out
}

// getPod reads a pod back with kubectl, as a user looks at it.
func (e *env) getPod(t *testing.T, namespace, name string) *corev1.Pod {
	t.Helper()
	res := e.mustKctl(t, "", "get", "pod", name, "-n", namespace, "-o", "json")
	var p corev1.Pod
	if err := json.Unmarshal([]byte(res.Stdout), &p); err != nil {
		t.Fatalf("cannot decode kubectl's pod: %v", err)
	}
	return &p
}

func container(p *corev1.Pod, name string) *corev1.Container {
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Name == name {
			return &p.Spec.Containers[i]
		}
	}
	for i := range p.Spec.InitContainers {
		if p.Spec.InitContainers[i].Name == name {
			return &p.Spec.InitContainers[i]
		}
	}
	return nil
}

func envOf(c *corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		out[e.Name] = e.Value
	}
	return out
}
