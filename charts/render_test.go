package charts

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "prometheus-metrics-proxy-hook"
	releaseName = "pmph"
	namespace   = "pmph-system"
	// The full name the chart derives from releaseName (which does not
	// contain the chart name).
	fullname = "pmph-prometheus-metrics-proxy-hook"

	monitoringAPI = "monitoring.coreos.com/v1"
	optInKey      = "prometheus-metrics-proxy-hook.kaidotio.github.io/prometheus-metrics-proxy"
)

// renderOpts says how to render the chart.
type renderOpts struct {
	// valuesFile is a ci/ file name (or empty); values are merged over it.
	valuesFile string
	values     string // YAML
	// apiVersions are extra API versions the fake cluster serves.
	apiVersions []string
	kubeVersion string
	skipSchema  bool
	namespace   string
	releaseName string
}

// object is one rendered Kubernetes object.
type object struct {
	APIVersion string
	Kind       string
	Name       string
	Namespace  string
	Labels     map[string]string
	JSON       []byte
	Hook       bool
	Source     string
}

func (o object) String() string { return o.Kind + "/" + o.Name }

type rendered struct {
	Objects []object
	Notes   string
}

// renderChart renders the chart as `helm install --dry-run` would on a
// cluster of the given version and APIs; the error is Helm's (schema or
// template failure).
func renderChart(t *testing.T, o renderOpts) (*rendered, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	vals := map[string]any{}
	if o.valuesFile != "" {
		b, err := os.ReadFile(filepath.Join(chartDir, "ci", o.valuesFile))
		if err != nil {
			t.Fatalf("reading %s: %v", o.valuesFile, err)
		}
		if err := yaml.Unmarshal(b, &vals); err != nil {
			t.Fatalf("parsing %s: %v", o.valuesFile, err)
		}
		if vals == nil {
			vals = map[string]any{}
		}
	}
	if o.values != "" {
		over := map[string]any{}
		if err := yaml.Unmarshal([]byte(o.values), &over); err != nil {
			t.Fatalf("parsing values %q: %v", o.values, err)
		}
		mergeValues(vals, over)
	}
	kv := o.kubeVersion
	if kv == "" {
		kv = "v1.33.0"
	}
	kubeVersion, err := chartutil.ParseKubeVersion(kv)
	if err != nil {
		t.Fatalf("kube version %q: %v", kv, err)
	}
	ns := o.namespace
	if ns == "" {
		ns = namespace
	}
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	install := action.NewInstall(cfg)
	install.DryRun = true
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = releaseName
	if o.releaseName != "" {
		install.ReleaseName = o.releaseName
	}
	install.Namespace = ns
	install.KubeVersion = kubeVersion
	install.APIVersions = chartutil.VersionSet(o.apiVersions)
	install.SkipSchemaValidation = o.skipSchema
	install.DisableOpenAPIValidation = true
	rel, err := install.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	r := &rendered{Notes: rel.Info.Notes}
	add := func(manifest string, hook bool) {
		docs := releaseutil.SplitManifests(manifest)
		keys := make([]string, 0, len(docs))
		for k := range docs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			doc := docs[k]
			if strings.TrimSpace(doc) == "" {
				continue
			}
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("rendered YAML does not parse: %v\n%s", err, doc)
			}
			if string(js) == "null" {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name      string            `json:"name"`
					Namespace string            `json:"namespace"`
					Labels    map[string]string `json:"labels"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(js, &head); err != nil {
				t.Fatalf("rendered object: %v\n%s", err, doc)
			}
			src := ""
			if i := strings.Index(doc, "# Source: "); i >= 0 {
				src = strings.SplitN(doc[i+len("# Source: "):], "\n", 2)[0]
			}
			r.Objects = append(r.Objects, object{
				APIVersion: head.APIVersion, Kind: head.Kind, Name: head.Metadata.Name,
				Namespace: head.Metadata.Namespace, Labels: head.Metadata.Labels,
				JSON: js, Hook: hook, Source: src,
			})
		}
	}
	add(rel.Manifest, false)
	for _, h := range rel.Hooks {
		add("# Source: "+h.Path+"\n"+h.Manifest, true)
	}
	return r, nil
}

// mustRender renders and fails the test on error.
func mustRender(t *testing.T, o renderOpts) *rendered {
	t.Helper()
	r, err := renderChart(t, o)
	if err != nil {
		t.Fatalf("rendering (file %q, values %q): %v", o.valuesFile, o.values, err)
	}
	return r
}

func mergeValues(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				mergeValues(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// ciValuesFiles lists the ci/*-values.yaml files.
func ciValuesFiles(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no ci values files: %v", err)
	}
	out := make([]string, len(m))
	for i, p := range m {
		out[i] = filepath.Base(p)
	}
	return out
}

// decode decodes an object into a typed value, rejecting fields the type
// does not know (catches misspelt or misplaced fields in the templates).
func decode[T any](t *testing.T, o object) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(o.JSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s (%s) does not decode into %T: %v", o, o.Source, v, err)
	}
	return v
}

// unstructured decodes an object into a map (custom resources).
func unstructuredOf(t *testing.T, o object) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(o.JSON, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (r *rendered) all(kind string) []object {
	var out []object
	for _, o := range r.Objects {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func (r *rendered) get(t *testing.T, kind, name string) object {
	t.Helper()
	for _, o := range r.Objects {
		if o.Kind == kind && o.Name == name {
			return o
		}
	}
	t.Fatalf("no %s/%s rendered; have %v", kind, name, r.Objects)
	return object{}
}

func (r *rendered) kindCounts() map[string]int {
	m := map[string]int{}
	for _, o := range r.Objects {
		m[o.Kind]++
	}
	return m
}

func (r *rendered) deployment(t *testing.T) appsv1.Deployment {
	t.Helper()
	return decode[appsv1.Deployment](t, r.get(t, "Deployment", fullname))
}

func (r *rendered) statefulSet(t *testing.T) appsv1.StatefulSet {
	t.Helper()
	return decode[appsv1.StatefulSet](t, r.get(t, "StatefulSet", fullname+"-redis"))
}

// webhookArg returns the value of --name=value in the webhook container's args.
func webhookArg(t *testing.T, d appsv1.Deployment, name string) (string, bool) {
	t.Helper()
	c := container(t, d.Spec.Template.Spec, "webhook")
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// workload is a pod template of the release with the labels its pods get.
type workload struct {
	name   string
	kind   string
	labels map[string]string
	spec   corev1.PodSpec
}

// workloads returns every pod (template) the release creates: Deployment,
// StatefulSet and test hook pods.
func (r *rendered) workloads(t *testing.T) []workload {
	t.Helper()
	var out []workload
	for _, o := range r.Objects {
		switch o.Kind {
		case "Deployment":
			d := decode[appsv1.Deployment](t, o)
			out = append(out, workload{o.Name, o.Kind, d.Spec.Template.Labels, d.Spec.Template.Spec})
		case "StatefulSet":
			s := decode[appsv1.StatefulSet](t, o)
			out = append(out, workload{o.Name, o.Kind, s.Spec.Template.Labels, s.Spec.Template.Spec})
		case "Pod":
			p := decode[corev1.Pod](t, o)
			out = append(out, workload{o.Name, o.Kind, p.Labels, p.Spec})
		case "DaemonSet", "Job", "CronJob", "ReplicaSet":
			t.Fatalf("unexpected workload kind %s", o)
		}
	}
	return out
}

func fmtKinds(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, m[k])
	}
	return b.String()
}
