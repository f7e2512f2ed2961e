package promk8s

import (
	"fmt"
	"strings"
	"testing"
)

// PodJob is the job name of the pod-discovering configuration.
const PodJob = "kubernetes-pods"

// podRelabelling is the conventional prometheus.io/* annotation scheme, as
// the prometheus-community chart's kubernetes-pods job has it: keep pods
// annotated prometheus.io/scrape: "true", take scheme, path and port from
// the annotations, scrape the pod IP, label samples with namespace, pod and
// node, and leave out pods that are not running.
const podRelabelling = `    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scheme]
        action: replace
        regex: (https?)
        target_label: __scheme__
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        action: replace
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_ip]
        action: replace
        regex: (\d+);(([A-Fa-f0-9]{1,4}::?){1,7}[A-Fa-f0-9]{1,4})
        replacement: '[$2]:$1'
        target_label: __address__
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_ip]
        action: replace
        regex: (\d+);((([0-9]+?)(\.|$)){4})
        replacement: $2:$1
        target_label: __address__
      - action: labelmap
        regex: __meta_kubernetes_pod_annotation_prometheus_io_param_(.+)
        replacement: __param_$1
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
      - source_labels: [__meta_kubernetes_namespace]
        action: replace
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        action: replace
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Pending|Succeeded|Failed|Completed
        action: drop
      - source_labels: [__meta_kubernetes_pod_node_name]
        action: replace
        target_label: node
`

// PodDiscoveryConfig is the configuration StartPodDiscovering runs: one job,
// kubernetes_sd_configs with role pod through kubeconfig, and the
// conventional prometheus.io/* relabelling.
func PodDiscoveryConfig(kubeconfig string, opts Options) string {
	opts = opts.withDefaults()
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n  scrape_interval: %s\n  scrape_timeout: %s\n", promDuration(opts.ScrapeInterval), promDuration(opts.ScrapeTimeout))
	fmt.Fprintf(&b, "scrape_configs:\n  - job_name: %s\n    kubernetes_sd_configs:\n      - role: pod\n        kubeconfig_file: %q\n", PodJob, kubeconfig)
	if len(opts.Namespaces) > 0 {
		b.WriteString("        namespaces:\n          names:\n")
		for _, ns := range opts.Namespaces {
			fmt.Fprintf(&b, "            - %q\n", ns)
		}
	}
	b.WriteString(podRelabelling)
	return b.String()
}

// StartPodDiscovering starts a Prometheus that discovers pods through the
// API server of kubeconfig and scrapes the annotated ones at their pod IPs.
// It is ready when it returns and stopped when the test ends.
func StartPodDiscovering(t testing.TB, kubeconfig string, opts Options) *Prometheus {
	t.Helper()
	opts = opts.withDefaults()
	config := PodDiscoveryConfig(kubeconfig, opts)
	srv := startServer(t, config, opts)
	return &Prometheus{Server: srv, config: func() string { return config }}
}
