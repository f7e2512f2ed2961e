package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/chartinstall"
)

// valuesSet is one way to install the chart.
type valuesSet struct {
	name  string
	files []string
}

// valuesSets are the chart's defaults, every ci/ values file, and this
// package's all-features file (the only one with the monitoring objects).
func valuesSets(t *testing.T) []valuesSet {
	t.Helper()
	sets := []valuesSet{{name: "defaults"}}
	files, err := filepath.Glob(filepath.Join(chartDir(), "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci/*-values.yaml files in %s (%v)", chartDir(), err)
	}
	files = append(files, filepath.Join("testdata", "all-features-values.yaml"))
	for _, f := range files {
		sets = append(sets, valuesSet{name: strings.TrimSuffix(filepath.Base(f), "-values.yaml"), files: []string{f}})
	}
	return sets
}

// customResourceKinds are the kinds the CRDs of hack/crds.sh serve to the
// chart.
var customResourceKinds = []string{"Certificate", "Issuer", "PeerAuthentication", "ServiceEntry", "Sidecar", "ServiceMonitor", "PrometheusRule"}

// testChartInstall installs the chart into the real API server for each
// values set, each in its own restricted namespace, and checks that every
// object was accepted (custom resources by their real CRD schemas), that
// kube-controller-manager could create the webhook's and Redis' pods under
// the restricted Pod Security Standard, that the helm test pods would be
// admitted too, and that uninstalling removes everything again. Nothing
// runs (there is no kubelet): this is about acceptance.
func testChartInstall(t *testing.T, e *env) {
	for _, set := range valuesSets(t) {
		t.Run(set.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			ns := "chart-" + set.name
			release := "pmph-" + set.name
			e.namespace(t, ns, restricted())
			opts := chartinstall.Options{Kubeconfig: e.cp.KubeconfigPath, ChartDir: chartDir(), Release: release, Namespace: ns, ValuesFiles: set.files}
			res, err := chartinstall.Install(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			// PodSecurity warns about workloads whose pod template would be
			// refused in this namespace; the API server warns about
			// deprecated APIs. A clean chart gets neither.
			if len(res.Warnings) > 0 {
				t.Errorf("the API server warned during the install:\n%s", strings.Join(res.Warnings, "\n"))
			}
			objs, err := chartinstall.Objects(res.Release.Manifest, ns, chartinstall.ClusterScoped)
			if err != nil {
				t.Fatal(err)
			}
			manifestFile := filepath.Join(t.TempDir(), "manifest.yaml")
			if err := os.WriteFile(manifestFile, []byte(res.Release.Manifest), 0o600); err != nil {
				t.Fatal(err)
			}

			// Every object of the release is stored, as kubectl sees it.
			got := e.mustKctl(t, "", "get", "-f", manifestFile, "-o", "json")
			var list struct {
				Items []struct {
					Kind     string `json:"kind"`
					Metadata struct {
						Name      string `json:"name"`
						Namespace string `json:"namespace"`
					} `json:"metadata"`
				} `json:"items"`
			}
			if err := json.Unmarshal([]byte(got.Stdout), &list); err != nil {
				t.Fatalf("cannot decode kubectl get -f: %v", err)
			}
			var want, have []string
			kinds := map[string]int{}
			for _, o := range objs {
				want = append(want, o.Kind+"/"+o.Namespace+"/"+o.Name)
				kinds[o.Kind]++
			}
			for _, it := range list.Items {
				have = append(have, it.Kind+"/"+it.Metadata.Namespace+"/"+it.Metadata.Name)
			}
			sort.Strings(want)
			sort.Strings(have)
			if !slices.Equal(want, have) {
				t.Errorf("the API server holds\n  %s\nbut the release has\n  %s", strings.Join(have, "\n  "), strings.Join(want, "\n  "))
			}
			var custom []string
			for _, k := range customResourceKinds {
				if kinds[k] > 0 {
					custom = append(custom, fmt.Sprintf("%d %s", kinds[k], k))
				}
			}
			t.Logf("%d objects accepted; custom resources: %s", len(objs), strings.Join(custom, ", "))
			if set.name == "all-features" {
				for _, k := range customResourceKinds {
					if kinds[k] == 0 {
						t.Errorf("the all-features values rendered no %s; the CRD schema of that kind went unchecked", k)
					}
				}
				checkSchemaEnforced(t, e, objs)
			}

			checkWorkloadPods(t, e, ns, objs)
			checkTestHooks(t, e, ns, res)

			if err := chartinstall.Uninstall(ctx, opts); err != nil {
				t.Fatal(err)
			}
			left := e.mustKctl(t, "", "get", "-f", manifestFile, "--ignore-not-found", "-o", "name")
			if s := strings.TrimSpace(left.Stdout); s != "" {
				t.Errorf("helm uninstall left objects behind:\n%s", s)
			}
		})
	}
}

// checkSchemaEnforced shows that the API server really validates custom
// resources against the CRD schemas (so that acceptance means something):
// the chart's ServiceMonitor with an interval the schema's pattern forbids
// is refused.
func checkSchemaEnforced(t *testing.T, e *env, objs []chartinstall.Object) {
	t.Helper()
	for _, o := range objs {
		if o.Kind != "ServiceMonitor" {
			continue
		}
		broken := strings.Replace(o.Manifest, "interval: 30s", "interval: thirty seconds", 1)
		if broken == o.Manifest {
			t.Fatalf("the ServiceMonitor has no `interval: 30s` to break:\n%s", o.Manifest)
		}
		broken = strings.Replace(broken, "name: "+o.Name, "name: "+o.Name+"-broken", 1)
		res := e.kctl(t, broken, "create", "--dry-run=server", "-f", "-")
		if res.OK() || !strings.Contains(res.Stderr, `spec.endpoints[0].interval: Invalid value: "thirty seconds"`) {
			t.Errorf("a ServiceMonitor with a bad interval was not refused by its CRD schema: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
		}
		return
	}
	t.Error("no ServiceMonitor to check the schema with")
}

// checkWorkloadPods waits until kube-controller-manager has created the pods
// of every Deployment and StatefulSet of the release: the API server only
// stores them when the restricted PodSecurity admission accepts them.
func checkWorkloadPods(t *testing.T, e *env, ns string, objs []chartinstall.Object) {
	t.Helper()
	for _, o := range objs {
		if o.Kind != "Deployment" && o.Kind != "StatefulSet" {
			continue
		}
		resource := strings.ToLower(o.Kind) + "/" + o.Name
		eventually(t, stepTimeout, 250*time.Millisecond, "pods of "+resource, func() error {
			res := e.kctl(t, "", "get", resource, "-n", ns, "-o", "json")
			if !res.OK() {
				return res.Err()
			}
			var w struct {
				Spec   struct{ Replicas int } `json:"spec"`
				Status struct {
					Replicas int `json:"replicas"`
				} `json:"status"`
			}
			if err := json.Unmarshal([]byte(res.Stdout), &w); err != nil {
				return err
			}
			if w.Status.Replicas < w.Spec.Replicas {
				return fmt.Errorf("%d of %d pods created; events:\n%s", w.Status.Replicas, w.Spec.Replicas, failedCreates(t, e, ns))
			}
			return nil
		})
	}
}

func failedCreates(t *testing.T, e *env, ns string) string {
	res := e.kctl(t, "", "get", "events", "-n", ns, "--field-selector", "reason=FailedCreate", "-o", "custom-columns=OBJECT:.involvedObject.name,MESSAGE:.message")
	return res.Stdout + res.Stderr
}

// checkTestHooks sends the chart's `helm test` pods to the API server as a
// server-side dry run: they are not created by an install, but they must be
// admissible in the release namespace too.
func checkTestHooks(t *testing.T, e *env, ns string, res *chartinstall.Result) {
	t.Helper()
	for _, h := range res.Release.Hooks {
		out := e.kctl(t, h.Manifest, "create", "--dry-run=server", "-n", ns, "-f", "-")
		if !out.OK() || strings.Contains(out.Stderr, "Warning") {
			t.Errorf("the test hook %s was not admitted cleanly: exit %d\n%s%s", h.Name, out.ExitCode, out.Stdout, out.Stderr)
		}
	}
}
