// Package chartinstall installs and uninstalls the Helm chart into a real
// API server with the Helm SDK, as `helm install` and `helm uninstall` do,
// and lists the objects a release consists of. It also collects the
// warnings the API server sends on the way (deprecated APIs, PodSecurity
// "would violate" notes on workloads), which `helm install` would print.
package chartinstall

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

// Client-side rate limits of the Helm client. client-go's defaults (5 QPS)
// would make an install of a few dozen objects wait on itself; these are the
// ones the helm command uses (its --burst-limit default is 100).
const (
	qps   = 50
	burst = 100
)

// Options name a release and where it goes.
type Options struct {
	// Kubeconfig is the kubeconfig file of the API server.
	Kubeconfig string
	// ChartDir is the chart's directory.
	ChartDir string
	// Release and Namespace name the release; the namespace must exist.
	Release   string
	Namespace string
	// ValuesFiles are read in order, later ones overriding earlier ones,
	// like repeated `helm install -f`.
	ValuesFiles []string
	// Values are merged over the files, like `--set`, but structured.
	Values map[string]any
	// Timeout bounds one Helm operation; zero means 2 minutes.
	Timeout time.Duration
	// Logf, when set, receives Helm's debug log.
	Logf func(format string, args ...any)
}

// Result is an installed release and what the API server warned about.
type Result struct {
	Release  *release.Release
	Warnings []string
}

// warnings collects the API server's warning headers of one Helm client.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	if code != 299 || text == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.list...)
}

// configuration is a Helm action configuration for the options, with a
// discovery cache of its own: a shared one (~/.kube/cache) could predate
// the CRDs and hide the monitoring.coreos.com API the chart checks for.
func configuration(o Options, w *warnings) (*action.Configuration, func(), error) {
	cacheDir, err := os.MkdirTemp("", "chartinstall-cache-")
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create a discovery cache directory: %w", err)
	}
	cleanup := func() { _ = os.RemoveAll(cacheDir) }
	flags := genericclioptions.NewConfigFlags(true)
	flags.KubeConfig = &o.Kubeconfig
	flags.Namespace = &o.Namespace
	flags.CacheDir = &cacheDir
	flags.WrapConfigFn = func(c *rest.Config) *rest.Config {
		c.QPS, c.Burst = qps, burst
		c.WarningHandler = w
		return c
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, o.Namespace, "secret", logf); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("cannot set up the Helm client: %w", err)
	}
	return cfg, cleanup, nil
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return 2 * time.Minute
	}
	return o.Timeout
}

// Install installs the chart as a new release.
func Install(ctx context.Context, o Options) (*Result, error) {
	chart, err := loader.Load(o.ChartDir)
	if err != nil {
		return nil, fmt.Errorf("cannot load the chart from %s: %w", o.ChartDir, err)
	}
	vals, err := Values(o.ValuesFiles, o.Values)
	if err != nil {
		return nil, err
	}
	w := &warnings{}
	cfg, cleanup, err := configuration(o, w)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	install := action.NewInstall(cfg)
	install.ReleaseName = o.Release
	install.Namespace = o.Namespace
	install.Timeout = o.timeout()
	rel, err := install.RunWithContext(ctx, chart, vals)
	if err != nil {
		return &Result{Release: rel, Warnings: w.all()}, fmt.Errorf("helm install %s into namespace %s failed: %w", o.Release, o.Namespace, err)
	}
	return &Result{Release: rel, Warnings: w.all()}, nil
}

// Uninstall removes the release and every object it created.
func Uninstall(ctx context.Context, o Options) error {
	w := &warnings{}
	cfg, cleanup, err := configuration(o, w)
	if err != nil {
		return err
	}
	defer cleanup()
	uninstall := action.NewUninstall(cfg)
	uninstall.Timeout = o.timeout()
	// Uninstall has no context parameter; the deadline still applies to the
	// caller, who stops waiting for an answer that comes too late.
	done := make(chan error, 1)
	go func() {
		_, err := uninstall.Run(o.Release)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("helm uninstall %s in namespace %s failed: %w", o.Release, o.Namespace, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("helm uninstall %s in namespace %s did not finish: %w", o.Release, o.Namespace, context.Cause(ctx))
	}
}

// Values reads the values files in order and merges the extra maps over
// them in order, the way Helm merges -f files and --set values: maps merge
// key by key, and anything else replaces what was there. The inputs are not
// changed.
func Values(files []string, extra ...map[string]any) (map[string]any, error) {
	out := map[string]any{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("cannot read the values file: %w", err)
		}
		vals := map[string]any{}
		if err := yaml.Unmarshal(data, &vals); err != nil {
			return nil, fmt.Errorf("cannot parse the values file %s: %w", f, err)
		}
		merge(out, vals)
	}
	for _, e := range extra {
		merge(out, e)
	}
	return out, nil
}

func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
			copied := map[string]any{}
			merge(copied, sm)
			dst[k] = copied
			continue
		}
		dst[k] = v
	}
}

// Object identifies one object of a release.
type Object struct {
	APIVersion string
	Kind       string
	Namespace  string // empty for cluster-scoped objects
	Name       string
	// Manifest is the object's YAML as Helm sent it.
	Manifest string
}

func (o Object) String() string {
	if o.Namespace == "" {
		return o.Kind + "/" + o.Name
	}
	return o.Kind + "/" + o.Namespace + "/" + o.Name
}

// Objects lists the objects of a rendered manifest stream (a release's
// Manifest, or a hook's). Objects without a namespace get defaultNamespace
// unless clusterScoped says their kind has none.
func Objects(manifest, defaultNamespace string, clusterScoped func(apiVersion, kind string) bool) ([]Object, error) {
	var out []Object
	for _, doc := range releaseutil.SplitManifests(manifest) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("cannot parse a manifest: %w", err)
		}
		if head.Kind == "" {
			continue // an empty document (a template that rendered nothing)
		}
		ns := head.Metadata.Namespace
		if ns == "" && !clusterScoped(head.APIVersion, head.Kind) {
			ns = defaultNamespace
		}
		out = append(out, Object{APIVersion: head.APIVersion, Kind: head.Kind, Namespace: ns, Name: head.Metadata.Name, Manifest: doc})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// ClusterScoped knows the cluster-scoped kinds the chart may render.
func ClusterScoped(apiVersion, kind string) bool {
	switch kind {
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding",
		"Namespace", "CustomResourceDefinition", "PriorityClass", "ClusterIssuer":
		return true
	}
	return strings.HasPrefix(apiVersion, "apiextensions.k8s.io/")
}
