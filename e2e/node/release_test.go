package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/chartnode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
)

const (
	prefix       = "prometheus-metrics-proxy-hook.kaidotio.github.io/"
	pollInterval = time.Second
)

// release is one installation of the chart on the shared node.
type release struct {
	chartnode.Release
	c *cluster
	// Volumes are the local PersistentVolumes made for its Redis claims.
	Volumes []string
}

// installOptions choose the chart and values of helm install and upgrade.
type installOptions struct {
	// Name is the release's name; its namespace is releaseNamespace(Name).
	Name string
	// Chart is the chart in the registry; empty means this checkout's.
	Chart registry.Chart
	// CIValues are files of the chart's ci/ directory, applied in order.
	CIValues []string
	// Set are --set arguments on top.
	Set []string
	// LocalVolumes makes a local PersistentVolume of the node's default
	// StorageClass for each of the chart's Redis claims (persistence on),
	// and deletes them once the release and its namespace are gone.
	LocalVolumes bool
}

// redisReplicas is the chart's default number of Redis nodes.
const redisReplicas = 3

// installChart installs the chart from the registry, with its serving
// certificate in a Secret (cert-manager does not run here), and uninstalls
// it and deletes its namespace when t ends.
func (c *cluster) installChart(t *testing.T, opts installOptions) *release {
	t.Helper()
	r := &release{Release: chartnode.NewRelease(opts.Name), c: c}
	if opts.LocalVolumes {
		r.createVolumes(t)
	}
	c.kubectl(t, "create", "namespace", r.Namespace)
	t.Cleanup(func() { r.uninstall(t) })
	if err := c.CreateTLSSecret(t.Context(), r.Release); err != nil {
		t.Fatal(err)
	}
	r.helmApply(t, "install", opts)
	return r
}

// upgrade runs helm upgrade to opts' chart with opts' values (helm takes
// the new chart's defaults, not the installed release's values).
func (r *release) upgrade(t *testing.T, opts installOptions) {
	t.Helper()
	r.helmApply(t, "upgrade", opts)
}

// helmApply runs helm install or upgrade of the release and fails t unless
// the release is deployed.
func (r *release) helmApply(t *testing.T, verb string, opts installOptions) {
	t.Helper()
	chart := opts.Chart
	if chart.URL == "" {
		chart = r.c.Chart
	}
	rel := r.Release
	rel.CIValues, rel.Set = opts.CIValues, opts.Set
	args, err := r.c.HelmArgs(verb, chart, rel)
	if err != nil {
		t.Fatal(err)
	}
	r.c.timed(t, fmt.Sprintf("helm %s %s %s", verb, r.Name, chart.Version), func(ctx context.Context) error {
		out, err := r.c.Helm.Run(ctx, args...)
		if err == nil && !strings.Contains(out, "STATUS: deployed") {
			err = fmt.Errorf("helm %s printed no STATUS: deployed:\n%s", verb, out)
		}
		return err
	})
	if t.Failed() {
		t.FailNow()
	}
}

// releaseNamespace is the namespace installChart installs release name in.
func releaseNamespace(name string) string { return chartnode.NewRelease(name).Namespace }

// createVolumes makes the release's local volumes and deletes them when t
// ends, after the uninstall (cleanups run last first) deleted their claims.
func (r *release) createVolumes(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	names, err := r.c.Node.CreateLocalVolumes(ctx, r.Name+"-redis-data", redisReplicas, "1Gi")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := r.c.Node.DeleteLocalVolumes(ctx, names); err != nil {
			t.Errorf("deleting the release's local volumes: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Volumes = names
}

// checkVolumes asserts that every Redis claim is Bound to one of the
// release's local volumes, and that Redis keeps its append-only file there.
func (r *release) checkVolumes(t *testing.T) {
	t.Helper()
	out := r.c.kubectl(t, "-n", r.Namespace, "get", "pvc", "-o", "json")
	var list corev1.PersistentVolumeClaimList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("decoding the claims: %v", err)
	}
	if len(list.Items) != redisReplicas {
		t.Errorf("%d claims in %s, want one per Redis node (%d)", len(list.Items), r.Namespace, redisReplicas)
	}
	for _, pvc := range list.Items {
		volume := pvc.Spec.VolumeName
		if pvc.Status.Phase != corev1.ClaimBound || !slices.Contains(r.Volumes, volume) {
			t.Errorf("claim %s is %s on volume %q, want Bound to one of %v", pvc.Name, pvc.Status.Phase, volume, r.Volumes)
			continue
		}
		if class := ptr.Deref(pvc.Spec.StorageClassName, ""); class != kubenode.StorageClass {
			t.Errorf("claim %s has StorageClass %q, want the default %q", pvc.Name, class, kubenode.StorageClass)
		}
		aof := filepath.Join(r.c.Node.VolumeDir(volume), "appendonlydir")
		if entries, err := os.ReadDir(aof); err != nil || len(entries) == 0 {
			t.Errorf("claim %s: Redis wrote no append-only file on its volume (%s: %d entries, %v)", pvc.Name, aof, len(entries), err)
		}
	}
}

// waitReady waits until the webhook's Deployment and, unless Redis runs
// outside the chart, its StatefulSet have every replica Ready.
func (r *release) waitReady(t *testing.T, withRedis bool) {
	t.Helper()
	r.c.waitReplicasReady(t, r.Namespace, "deployment", r.Fullname)
	if withRedis {
		r.c.waitReplicasReady(t, r.Namespace, "statefulset", r.Fullname+"-redis")
	}
}

// helmTest runs every test of the chart (helm test) and fails t with the
// test pods' logs when one fails (a test pod is deleted once it passed, so
// helm test --logs cannot fetch them).
func (r *release) helmTest(t *testing.T) {
	t.Helper()
	r.c.timed(t, "helm test "+r.Name, func(ctx context.Context) error {
		out, err := r.c.Helm.Run(ctx, "test", r.Name, "--namespace", r.Namespace, "--kubeconfig", r.c.Node.KubeconfigPath,
			"--timeout", "5m")
		if err != nil {
			logs, lerr := r.c.Node.Kubectl(ctx, "-n", r.Namespace, "logs", "-l", "app.kubernetes.io/component=test", "--prefix", "--tail=20")
			return fmt.Errorf("%w\nthe test pods' logs (%v):\n%s", err, lerr, logs)
		}
		for _, test := range []string{"-test-image", "-test-quorum"} {
			if !strings.Contains(out, r.Fullname+test) {
				return fmt.Errorf("helm test ran no %s:\n%s", r.Fullname+test, out)
			}
		}
		return nil
	})
}

// uninstall removes the release and its namespace, so that the next test
// starts from a node without webhook configurations or Redis pods.
func (r *release) uninstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := r.c.Helm.Run(ctx, "uninstall", r.Name, "--namespace", r.Namespace, "--kubeconfig", r.c.Node.KubeconfigPath,
		"--wait", "--timeout", "3m", "--ignore-not-found"); err != nil {
		t.Errorf("helm uninstall %s: %v\n%s", r.Name, err, out)
	}
	r.c.deleteNamespace(ctx, t, r.Namespace)
}
