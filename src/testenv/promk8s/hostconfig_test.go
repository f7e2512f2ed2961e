package promk8s

import (
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestHostConfig(t *testing.T) {
	const kubeconfig = "/tmp/kubeconfig"
	host := Host{Kubeconfig: kubeconfig, ReloaderEnv: map[string]string{"SHARD": "0", "POD_NAME": "prometheus-p-0"}, RulesDir: "/host/rules"}
	tests := []struct {
		name      string
		generated string
		want      string // YAML compared as data; empty when an error is expected
		wantRules []string
		wantErr   string
	}{
		{
			name:      "no scrape configs",
			generated: "global:\n  scrape_interval: 30s\nscrape_configs: []\n",
			want:      "global:\n  scrape_interval: 30s\nscrape_configs: []\n",
		},
		{
			name: "every kubernetes_sd_configs entry gets the kubeconfig",
			generated: `scrape_configs:
- job_name: serviceMonitor/ns/a/0
  kubernetes_sd_configs:
  - role: endpointslice
    namespaces:
      names: [ns]
  - role: pod
  relabel_configs:
  - action: keep
    source_labels: [__meta_kubernetes_service_label_app]
    regex: (a);true
- job_name: static
  static_configs:
  - targets: [127.0.0.1:9090]
`,
			want: `scrape_configs:
- job_name: serviceMonitor/ns/a/0
  kubernetes_sd_configs:
  - role: endpointslice
    kubeconfig_file: /tmp/kubeconfig
    namespaces:
      names: [ns]
  - role: pod
    kubeconfig_file: /tmp/kubeconfig
  relabel_configs:
  - action: keep
    source_labels: [__meta_kubernetes_service_label_app]
    regex: (a);true
- job_name: static
  static_configs:
  - targets: [127.0.0.1:9090]
`,
		},
		{
			name: "the config-reloader's variables are substituted",
			generated: `global:
  external_labels:
    prometheus_replica: $(POD_NAME)
scrape_configs:
- job_name: x
  relabel_configs:
  - source_labels: [__tmp_hash, __tmp_disable_sharding]
    regex: $(SHARD);|.+;.+
    action: keep
`,
			want: `global:
  external_labels:
    prometheus_replica: prometheus-p-0
scrape_configs:
- job_name: x
  relabel_configs:
  - source_labels: [__tmp_hash, __tmp_disable_sharding]
    regex: 0;|.+;.+
    action: keep
`,
		},
		{
			name:      "rule files mounted from ConfigMaps move to the rules directory",
			generated: "rule_files:\n- /etc/prometheus/rules/prometheus-p-rulefiles-0/*.yaml\n- /etc/prometheus/rules/prometheus-p-rulefiles-1/*.yaml\n",
			want:      "rule_files:\n- /host/rules/prometheus-p-rulefiles-0/*.yaml\n- /host/rules/prometheus-p-rulefiles-1/*.yaml\n",
			wantRules: []string{"prometheus-p-rulefiles-0", "prometheus-p-rulefiles-1"},
		},
		{
			name:      "a rule file outside a ConfigMap's directory is refused",
			generated: "rule_files:\n- /etc/prometheus/rules/*.yaml\n",
			wantErr:   `rule_files[0] is "/etc/prometheus/rules/*.yaml", not a ConfigMap's directory`,
		},
		{
			name:      "a variable the reloader's environment lacks is an error",
			generated: "scrape_configs:\n- job_name: x\n  kubernetes_sd_configs:\n  - role: pod\n    selectors:\n    - role: pod\n      field: spec.nodeName=$(NODE_NAME)\n",
			wantErr:   "refers to $(NODE_NAME), which the config-reloader's environment here does not set (it sets POD_NAME, SHARD)",
		},
		{
			name:      "an explicit API server is not an in-cluster configuration",
			generated: "scrape_configs:\n- job_name: x\n  kubernetes_sd_configs:\n  - role: pod\n    api_server: https://10.0.0.1\n",
			wantErr:   "already sets api_server",
		},
		{
			name:      "a mounted bearer token is refused with its field",
			generated: "scrape_configs:\n- job_name: x\n  authorization:\n    credentials_file: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
			wantErr:   "scrape_configs[0].authorization.credentials_file names /var/run/secrets/kubernetes.io/serviceaccount/token",
		},
		{
			name:      "a mounted TLS file is refused with its field",
			generated: "scrape_configs:\n- job_name: x\n  tls_config:\n    ca_file: /etc/prometheus/certs/secret_ns_ca_ca.crt\n",
			wantErr:   "scrape_configs[0].tls_config.ca_file names /etc/prometheus/certs/",
		},
		{
			name:      "not YAML",
			generated: "scrape_configs: [",
			wantErr:   "is not YAML",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rules, err := HostConfig([]byte(tt.generated), host)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("HostConfig error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("HostConfig: %v", err)
			}
			var gotData, wantData any
			if err := yaml.Unmarshal([]byte(got), &gotData); err != nil {
				t.Fatalf("the host configuration is not YAML: %v\n%s", err, got)
			}
			if err := yaml.Unmarshal([]byte(tt.want), &wantData); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gotData, wantData) {
				t.Errorf("HostConfig =\n%s\nwant\n%s", got, tt.want)
			}
			if !reflect.DeepEqual(rules, tt.wantRules) {
				t.Errorf("HostConfig's rule ConfigMaps = %q, want %q", rules, tt.wantRules)
			}
		})
	}
}

func TestPodDiscoveryConfig(t *testing.T) {
	got := PodDiscoveryConfig("/k/config", Options{Namespaces: []string{"apps"}})
	var config struct {
		Global struct {
			ScrapeInterval string `json:"scrape_interval"`
			ScrapeTimeout  string `json:"scrape_timeout"`
		} `json:"global"`
		ScrapeConfigs []struct {
			JobName string `json:"job_name"`
			SD      []struct {
				Role       string `json:"role"`
				Kubeconfig string `json:"kubeconfig_file"`
				Namespaces struct {
					Names []string `json:"names"`
				} `json:"namespaces"`
			} `json:"kubernetes_sd_configs"`
			Relabel []map[string]any `json:"relabel_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.UnmarshalStrict([]byte(got), &config); err != nil {
		t.Fatalf("the configuration does not parse: %v\n%s", err, got)
	}
	if config.Global.ScrapeInterval != "1000ms" || config.Global.ScrapeTimeout != "1000ms" {
		t.Errorf("global = %+v, want 1000ms interval and timeout by default", config.Global)
	}
	if len(config.ScrapeConfigs) != 1 || config.ScrapeConfigs[0].JobName != PodJob {
		t.Fatalf("scrape configs = %+v, want the one job %s", config.ScrapeConfigs, PodJob)
	}
	sd := config.ScrapeConfigs[0].SD
	if len(sd) != 1 || sd[0].Role != "pod" || sd[0].Kubeconfig != "/k/config" || !reflect.DeepEqual(sd[0].Namespaces.Names, []string{"apps"}) {
		t.Errorf("kubernetes_sd_configs = %+v, want role pod through /k/config in apps", sd)
	}
	if n := len(config.ScrapeConfigs[0].Relabel); n < 5 {
		t.Errorf("%d relabel rules, want the prometheus.io/* set", n)
	}
}
