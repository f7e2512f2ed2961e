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
	"k8s.io/utils/ptr"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
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
	// StartupTimeout is the pod's semaphore-startup-timeout annotation;
	// empty leaves the webhook's default.
	StartupTimeout string
	// Strategy is the Deployment's update strategy; nil leaves Kubernetes'
	// default rolling update.
	Strategy *appsv1.DeploymentStrategy
	// SchedulingGate, when set, keeps every pod Pending until the gate is
	// removed from it.
	SchedulingGate string
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
			out, err := c.Node.Kubectl(ctx, "-n", w.Namespace, "apply", "-f", manifest)
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

// podList lists the workload's pods.
func (w workload) podList(ctx context.Context, c *cluster) (corev1.PodList, error) {
	var list corev1.PodList
	err := c.getJSON(ctx, &list, "-n", w.Namespace, "pods", "-l", "app="+w.Name)
	return list, err
}

// pods lists the workload's pods (sorted by name) and those of them with a
// container running.
func (w workload) pods(ctx context.Context, c *cluster) (running, all []string, err error) {
	list, err := w.podList(ctx, c)
	if err != nil {
		return nil, nil, err
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

// fullDenial is the start of the webhook's denial of the workload's full
// semaphore.
func (w workload) fullDenial() string {
	return fmt.Sprintf("semaphore %q is full (%d/%d slots held)", w.Namespace+"/"+w.Key, w.Size, w.Size)
}

// denials counts the FailedCreate events of the namespace's ReplicaSets
// whose message contains want.
func (w workload) denials(ctx context.Context, c *cluster, want string) (int, error) {
	return c.countEvents(ctx, w.Namespace, "reason=FailedCreate,involvedObject.kind=ReplicaSet",
		func(message string) bool { return strings.Contains(message, want) })
}

// waitRunning waits until exactly Size pods run, failing if more ever do,
// and returns them.
func (w workload) waitRunning(t *testing.T, c *cluster) []string {
	t.Helper()
	var first []string
	c.timed(t, fmt.Sprintf("%d pods Running", w.Size), func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			running, all, err := w.pods(ctx, c)
			if err != nil {
				return false, err.Error(), nil
			}
			if len(running) > w.Size {
				return false, "", fmt.Errorf("%d pods run on a semaphore of size %d: %v", len(running), w.Size, running)
			}
			first = running
			return len(running) == w.Size, fmt.Sprintf("running %v of pods %v", running, all), nil
		})
	})
	if t.Failed() {
		t.FailNow()
	}
	return first
}

// waitDenials waits for n more FailedCreate events carrying want while
// exactly the pods running stay, and no other pod exists. It touches the
// ReplicaSets every 10 s: each touch makes the controller try to create the
// missing pod at once, instead of after its back-off, which doubles with
// every denial up to minutes.
func (w workload) waitDenials(t *testing.T, c *cluster, running []string, want string, n int) {
	t.Helper()
	base, err := w.denials(t.Context(), c, want)
	if err != nil {
		t.Fatal(err)
	}
	var touched time.Time
	c.timed(t, fmt.Sprintf("%d more denials %q while the semaphore is full", n, want), func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			now, all, err := w.pods(ctx, c)
			if err != nil {
				return false, err.Error(), nil
			}
			if !slices.Equal(now, running) || len(all) != len(running) {
				return false, "", fmt.Errorf("while the semaphore is full the pods changed: running %v of pods %v, want exactly %v", now, all, running)
			}
			got, err := w.denials(ctx, c, want)
			if err != nil {
				return false, err.Error(), nil
			}
			if time.Since(touched) >= 10*time.Second {
				touched = time.Now()
				if out, err := c.Node.Kubectl(ctx, "-n", w.Namespace, "annotate", "replicasets", "-l", "app="+w.Name, "--overwrite",
					fmt.Sprintf("pmph.invalid/touched=%d", touched.UnixNano())); err != nil {
					return false, fmt.Sprintf("touching the ReplicaSets: %v: %s", err, out), nil
				}
			}
			return got >= base+n, fmt.Sprintf("%d FailedCreate events of the ReplicaSet with the denial, want at least %d", got, base+n), nil
		})
	})
}

// manifest is the Deployment, restricted-PSS compliant as users write it.
func (w workload) manifest() any {
	replicas := int32(w.Replicas)
	tmpl := w.podTemplate()
	d := appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: w.Name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: tmpl.Labels},
			Template: tmpl,
		},
	}
	if w.Strategy != nil {
		d.Spec.Strategy = *w.Strategy
	}
	return d
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
	tmpl := corev1.PodTemplateSpec{
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
				RunAsNonRoot:   ptr.To(true),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "app",
				Image: images.MetricsAppRef,
				Env:   env,
				Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: images.MetricsAppPort}},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					ReadOnlyRootFilesystem:   ptr.To(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	if w.StartupTimeout != "" {
		tmpl.Annotations[prefix+"semaphore-startup-timeout"] = w.StartupTimeout
	}
	if w.SchedulingGate != "" {
		tmpl.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: w.SchedulingGate}}
	}
	return tmpl
}

// waitGateOpen waits until Size pods run their app container behind a
// started native sidecar: the kubelet starts the app only once the
// sidecar's startup probe passed, which the lease API's confirmation of the
// pod's slot opens.
func (w workload) waitGateOpen(t *testing.T, c *cluster) {
	t.Helper()
	c.timed(t, fmt.Sprintf("%d app containers running behind their sidecar", w.Size), func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			list, err := w.podList(ctx, c)
			if err != nil {
				return false, err.Error(), nil
			}
			var gated []string
			for _, p := range list.Items {
				if p.DeletionTimestamp == nil && containerStarted(p.Status.InitContainerStatuses, admission.ContainerName) && containerStarted(p.Status.ContainerStatuses, "app") {
					gated = append(gated, p.Name)
				}
			}
			if len(gated) > w.Size {
				return false, "", fmt.Errorf("%d app containers run on a semaphore of size %d: %v", len(gated), w.Size, gated)
			}
			return len(gated) == w.Size, fmt.Sprintf("pods with a started sidecar and a running app: %v", gated), nil
		})
	})
}

func containerStarted(statuses []corev1.ContainerStatus, name string) bool {
	for _, s := range statuses {
		if s.Name == name {
			return s.State.Running != nil && s.Started != nil && *s.Started
		}
	}
	return false
}
