package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

// workload is a Deployment of the metrics app, opted in on a semaphore.
type workload struct {
	Name, Namespace, Key string
	Size, Replicas       int
	// ScrapeInterval is the pod's scrape-interval annotation; empty means 5s.
	ScrapeInterval string
	// Tick and Drain set the app's counting period and its drain after
	// SIGTERM; zero keeps the image's defaults.
	Tick, Drain time.Duration
}

// apply creates or updates the workload's Deployment.
func (w workload) apply(t *testing.T, c *cluster) {
	t.Helper()
	c.applyObject(t, w.Namespace, w.manifest())
}

// applyPods creates the workload as bare pods (podsManifest). Nothing
// retries a bare pod's denial, so it applies again, as a controller would,
// until every pod exists: a webhook on a loaded machine may deny one for
// want of a Redis quorum.
func (w workload) applyPods(t *testing.T, c *cluster) {
	t.Helper()
	manifest := writeManifest(t, w.podsManifest())
	c.timed(t, fmt.Sprintf("%d pods created", w.Replicas), func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			out, err := c.node.Kubectl(ctx, "-n", w.Namespace, "apply", "-f", manifest)
			return err == nil, fmt.Sprintf("kubectl apply: %v\n%s", err, out), nil
		})
	})
	if t.Failed() {
		t.FailNow()
	}
}

// applyObject applies obj with kubectl.
func (c *cluster) applyObject(t *testing.T, namespace string, obj any) {
	t.Helper()
	c.kubectl(t, "-n", namespace, "apply", "-f", writeManifest(t, obj))
}

// writeManifest writes obj as JSON into a file of the test.
func writeManifest(t *testing.T, obj any) string {
	t.Helper()
	data, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), "manifest.json")
	if err := os.WriteFile(manifest, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return manifest
}

// pods lists the workload's pods (sorted by name) and those of them with a
// container running.
func (w workload) pods(ctx context.Context, c *cluster) (running, all []string, err error) {
	out, err := c.node.Kubectl(ctx, "-n", w.Namespace, "get", "pods", "-l", "app="+w.Name, "-o", "json")
	if err != nil {
		return nil, nil, err
	}
	var list corev1.PodList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, nil, fmt.Errorf("decoding the pod list: %w", err)
	}
	for _, p := range list.Items {
		all = append(all, p.Name)
		if p.Status.Phase == corev1.PodRunning && anyRunning(p.Status) {
			running = append(running, p.Name)
		}
	}
	slices.Sort(all)
	slices.Sort(running)
	return running, all, nil
}

func anyRunning(s corev1.PodStatus) bool {
	for _, c := range append(slices.Clone(s.InitContainerStatuses), s.ContainerStatuses...) {
		if c.State.Running != nil {
			return true
		}
	}
	return false
}

// fullDenials counts the FailedCreate events of the namespace's ReplicaSets
// that carry the webhook's denial of the workload's full semaphore.
func (w workload) fullDenials(ctx context.Context, c *cluster) (int, error) {
	out, err := c.node.Kubectl(ctx, "-n", w.Namespace, "get", "events", "--field-selector", "reason=FailedCreate,involvedObject.kind=ReplicaSet", "-o", "json")
	if err != nil {
		return 0, err
	}
	var list corev1.EventList
	if err := json.Unmarshal(out, &list); err != nil {
		return 0, fmt.Errorf("decoding the event list: %w", err)
	}
	want := fmt.Sprintf("semaphore %q is full (%d/%d slots held)", w.Namespace+"/"+w.Key, w.Size, w.Size)
	n := 0
	for _, ev := range list.Items {
		if strings.Contains(ev.Message, want) {
			n += max(int(ev.Count), 1)
		}
	}
	return n, nil
}

// manifest is the Deployment, restricted-PSS compliant as users write it.
func (w workload) manifest() any {
	replicas := int32(w.Replicas)
	tmpl := w.podTemplate()
	return appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: w.Name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: tmpl.Labels},
			Template: tmpl,
		},
	}
}

// podsManifest is Replicas bare pods of the same template, NAME-0 to
// NAME-(Replicas-1): nothing recreates them once they are deleted.
func (w workload) podsManifest() any {
	list := corev1.List{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "List"}}
	tmpl := w.podTemplate()
	for i := range w.Replicas {
		pod := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
		pod.Name = fmt.Sprintf("%s-%d", w.Name, i)
		list.Items = append(list.Items, runtime.RawExtension{Object: &pod})
	}
	return list
}

// podTemplate is the metrics app, opted in on the workload's semaphore and
// annotated for the conventional prometheus.io/* scrape configuration.
func (w workload) podTemplate() corev1.PodTemplateSpec {
	interval := w.ScrapeInterval
	if interval == "" {
		interval = "5s"
	}
	var env []corev1.EnvVar
	if w.Tick > 0 {
		env = append(env, corev1.EnvVar{Name: countingapp.EnvTick, Value: w.Tick.String()})
	}
	if w.Drain > 0 {
		env = append(env, corev1.EnvVar{Name: countingapp.EnvDrain, Value: w.Drain.String()})
	}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels: map[string]string{"app": w.Name},
			Annotations: map[string]string{
				prefix + "prometheus-metrics-proxy": "true",
				prefix + "semaphore-key":            w.Key,
				prefix + "semaphore-size":           strconv.Itoa(w.Size),
				prefix + "scrape-interval":          interval,
				"prometheus.io/scrape":              "true",
				"prometheus.io/port":                strconv.Itoa(images.MetricsAppPort),
			},
		},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr(true),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "app",
				Image: images.MetricsAppRef,
				Env:   env,
				Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: images.MetricsAppPort}},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr(false),
					ReadOnlyRootFilesystem:   ptr(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

func ptr[T any](v T) *T { return &v }
