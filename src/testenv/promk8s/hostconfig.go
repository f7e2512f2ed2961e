package promk8s

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// podOnlyPaths are where the operator's Prometheus pod finds mounted secrets,
// config maps, rule files and its service account token; a host process has
// none of them.
var podOnlyPaths = []string{"/etc/prometheus/", "/var/run/secrets/"}

// reloaderVar is how the operator's configuration refers to the environment
// of its config-reloader container, which substitutes the value before
// Prometheus reads the file (the shard's keep rule holds $(SHARD), say).
var reloaderVar = regexp.MustCompile(`\$\(([a-zA-Z_0-9]+)\)`)

// podRulesDir is where the operator's Prometheus pod mounts each rule
// ConfigMap, one directory per ConfigMap.
const podRulesDir = "/etc/prometheus/rules/"

// Host is what a Prometheus on the host has in place of the operator's pod.
type Host struct {
	// Kubeconfig reaches the API server; the pod has its service account.
	Kubeconfig string
	// ReloaderEnv is the environment of the pod's config-reloader.
	ReloaderEnv map[string]string
	// RulesDir holds the rule ConfigMaps the pod mounts under
	// /etc/prometheus/rules, one directory per ConfigMap named after it.
	RulesDir string
}

// HostConfig turns the configuration prometheus-operator generated for its
// Prometheus pod into one that a Prometheus on the host runs, and returns
// the names of the rule ConfigMaps it reads. It does what the
// config-reloader does in the pod: every $(NAME) becomes ReloaderEnv's NAME,
// and a name it lacks is an error, as in the reloader. The changes of its
// own: every kubernetes_sd_configs entry gets kubeconfig_file, because the
// host has no in-cluster service account and API server address, and
// rule_files under /etc/prometheus/rules move to RulesDir. Everything else
// is kept as generated. A configuration that names any other file only the
// pod has (a mounted TLS or bearer-token file, say) is refused with the
// field that names it, rather than run half-working.
func HostConfig(generated []byte, host Host) (config string, ruleConfigMaps []string, err error) {
	expanded, err := expandReloaderVars(generated, host.ReloaderEnv)
	if err != nil {
		return "", nil, err
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(expanded, &cfg); err != nil {
		return "", nil, fmt.Errorf("the operator's configuration is not YAML: %w", err)
	}
	if err := addKubeconfig(cfg, host.Kubeconfig); err != nil {
		return "", nil, err
	}
	if host.RulesDir != "" {
		if ruleConfigMaps, err = moveRuleFiles(cfg, host.RulesDir); err != nil {
			return "", nil, err
		}
	}
	if field, path := findPodOnlyPath("", cfg); field != "" {
		return "", nil, fmt.Errorf("%s names %s, a file that only the operator's Prometheus pod has; a host Prometheus cannot run this configuration", field, path)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("cannot write the host configuration: %w", err)
	}
	return string(out), ruleConfigMaps, nil
}

func addKubeconfig(cfg map[string]any, kubeconfig string) error {
	scrapeConfigs, _ := cfg["scrape_configs"].([]any)
	for i, sc := range scrapeConfigs {
		job, _ := sc.(map[string]any)
		sds, _ := job["kubernetes_sd_configs"].([]any)
		for j, sd := range sds {
			entry, ok := sd.(map[string]any)
			if !ok {
				return fmt.Errorf("scrape_configs[%d].kubernetes_sd_configs[%d] is not a mapping", i, j)
			}
			for _, key := range []string{"api_server", "kubeconfig_file"} {
				if v, set := entry[key]; set {
					return fmt.Errorf("scrape_configs[%d] (%v).kubernetes_sd_configs[%d] already sets %s to %v; the harness only runs in-cluster configurations", i, job["job_name"], j, key, v)
				}
			}
			entry["kubeconfig_file"] = kubeconfig
		}
	}
	return nil
}

// moveRuleFiles points every rule_files pattern under podRulesDir at
// rulesDir and returns the ConfigMaps they name, in order.
func moveRuleFiles(cfg map[string]any, rulesDir string) ([]string, error) {
	files, _ := cfg["rule_files"].([]any)
	var names []string
	for i, f := range files {
		pattern, _ := f.(string)
		rest, ok := strings.CutPrefix(pattern, podRulesDir)
		if !ok {
			continue
		}
		name, _, found := strings.Cut(rest, "/")
		if !found || name == "" || name == "." || name == ".." {
			return nil, fmt.Errorf("rule_files[%d] is %q, not a ConfigMap's directory under %s", i, pattern, podRulesDir)
		}
		files[i] = filepath.Join(rulesDir, rest)
		names = append(names, name)
	}
	return names, nil
}

func expandReloaderVars(generated []byte, env map[string]string) ([]byte, error) {
	var missing []string
	out := reloaderVar.ReplaceAllFunc(generated, func(ref []byte) []byte {
		name := string(reloaderVar.FindSubmatch(ref)[1])
		v, ok := env[name]
		if !ok {
			missing = append(missing, name)
		}
		return []byte(v)
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("the operator's configuration refers to $(%s), which the config-reloader's environment here does not set (it sets %s)", missing[0], strings.Join(sortedKeys(env), ", "))
	}
	return out, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// findPodOnlyPath returns the first field (in key order) whose value starts
// with one of podOnlyPaths, and that value.
func findPodOnlyPath(field string, v any) (string, string) {
	switch v := v.(type) {
	case string:
		for _, prefix := range podOnlyPaths {
			if strings.HasPrefix(v, prefix) {
				return field, v
			}
		}
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if f, p := findPodOnlyPath(joinField(field, k), v[k]); f != "" {
				return f, p
			}
		}
	case []any:
		for i, e := range v {
			if f, p := findPodOnlyPath(fmt.Sprintf("%s[%d]", field, i), e); f != "" {
				return f, p
			}
		}
	}
	return "", ""
}

func joinField(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}
