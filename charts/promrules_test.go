package charts

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The PrometheusRule's alerts, evaluated by promtool (the Debian prometheus
// package, which make test installs) on synthetic series of the webhook's
// metrics: each alert fires in its situation, with its labels, and stays
// quiet otherwise.
func TestAlertsFire(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool was not found on PATH; install the Debian package prometheus (make test does it): %v", err)
	}
	r := mustRender(t, renderOpts{values: "prometheusRule: {enabled: true, fullDenialRateThreshold: 1}", apiVersions: []string{monitoringAPI}})
	pr := unstructuredOf(t, r.get(t, "PrometheusRule", fullname))
	rules, err := json.Marshal(map[string]any{"groups": pr["spec"].(map[string]any)["groups"]})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.json"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", filepath.Join(dir, "rules.json")).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}

	// promtool compares annotations too; the unit tests check labels only,
	// so they run on a copy without annotations (check rules above has
	// validated the annotation templates).
	groups := pr["spec"].(map[string]any)["groups"].([]any)
	for _, g := range groups {
		for _, rule := range g.(map[string]any)["rules"].([]any) {
			delete(rule.(map[string]any), "annotations")
		}
	}
	bare, err := json.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bare.json"), bare, 0o644); err != nil {
		t.Fatal(err)
	}

	sel := fmt.Sprintf(`namespace="%s",service="%s"`, namespace, fullname)
	m := func(name, labels string) string {
		return fmt.Sprintf("prometheus_metrics_proxy_hook_%s{%s,pod=\"w1\"%s}", name, sel, labels)
	}
	up := func(node, values string) map[string]any {
		return map[string]any{"series": m("redis_node_up", `,node="`+node+`"`), "values": values}
	}
	type alert = map[string]any
	fires := func(name string, labels map[string]string) alert {
		l := map[string]string{"namespace": namespace}
		for k, v := range labels {
			l[k] = v
		}
		return alert{"alertname": name, "labels": l}
	}
	tests := []struct {
		name   string
		series []map[string]any
		at     string
		want   map[string][]alert // alert name -> expected firing alerts (labels besides severity)
	}{
		{"all nodes up", []map[string]any{up("a", "1x30"), up("b", "1x30"), up("c", "1x30")}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookRedisQuorumAtRisk": nil,
			"PrometheusMetricsProxyHookRedisQuorumLost":   nil,
			"PrometheusMetricsProxyHookRedisNodeDown":     nil,
		}},
		{"one node down", []map[string]any{up("a", "1x30"), up("b", "1x30"), up("c", "0x30")}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookRedisQuorumAtRisk": {fires("", map[string]string{"pod": "w1", "severity": "warning"})},
			"PrometheusMetricsProxyHookRedisQuorumLost":   nil,
			"PrometheusMetricsProxyHookRedisNodeDown":     {fires("", map[string]string{"node": "c", "severity": "warning"})},
		}},
		{"one node down for 3 minutes only", []map[string]any{up("a", "1x30"), up("b", "1x30"), up("c", "1 1 1 1 1 1 1 0 0 0 0x20")}, "10m", map[string][]alert{
			"PrometheusMetricsProxyHookRedisQuorumAtRisk": {fires("", map[string]string{"pod": "w1", "severity": "warning"})},
			"PrometheusMetricsProxyHookRedisNodeDown":     nil,
		}},
		{"two of three down", []map[string]any{up("a", "1x30"), up("b", "0x30"), up("c", "0x30")}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookRedisQuorumLost": {fires("", map[string]string{"pod": "w1", "severity": "critical"})},
		}},
		{"two of five down keeps the quorum", []map[string]any{up("a", "1x30"), up("b", "1x30"), up("c", "1x30"), up("d", "0x30"), up("e", "0x30")}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookRedisQuorumLost":   nil,
			"PrometheusMetricsProxyHookRedisQuorumAtRisk": {fires("", map[string]string{"pod": "w1", "severity": "warning"})},
		}},
		{"certificate expires in 5 days", []map[string]any{
			{"series": m("certificate_expiry_timestamp_seconds", `,certificate="serving"`), "values": "432000x30"},
			{"series": m("certificate_expiry_timestamp_seconds", `,certificate="ca"`), "values": "157680000x30"},
		}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookCertificateExpiring": {fires("", map[string]string{"pod": "w1", "certificate": "serving", "severity": "warning"})},
		}},
		{"certificate expires in 30 days", []map[string]any{
			{"series": m("certificate_expiry_timestamp_seconds", `,certificate="serving"`), "values": "2592000x30"},
		}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookCertificateExpiring": nil,
		}},
		{"semaphores full at 2/s", []map[string]any{
			{"series": m("semaphore_operations_total", `,operation="acquire",result="full"`), "values": "0+120x60"},
		}, "40m", map[string][]alert{
			"PrometheusMetricsProxyHookSemaphoresFull": {fires("", map[string]string{"severity": "info"})},
		}},
		{"semaphores full at 0.5/s", []map[string]any{
			{"series": m("semaphore_operations_total", `,operation="acquire",result="full"`), "values": "0+30x60"},
			{"series": m("semaphore_operations_total", `,operation="acquire",result="ok"`), "values": "0+600x60"},
		}, "40m", map[string][]alert{
			"PrometheusMetricsProxyHookSemaphoresFull": nil,
		}},
		{"renewals lost", []map[string]any{
			{"series": m("semaphore_operations_total", `,operation="renew",result="lost"`), "values": "0+1x30"},
			{"series": m("semaphore_operations_total", `,operation="renew",result="ok"`), "values": "0+100x30"},
		}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookLeaseRenewalFailures": {fires("", map[string]string{"severity": "warning"})},
		}},
		{"renewals fine", []map[string]any{
			{"series": m("semaphore_operations_total", `,operation="renew",result="ok"`), "values": "0+100x30"},
			{"series": m("semaphore_operations_total", `,operation="acquire",result="full"`), "values": "0+1x30"},
		}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookLeaseRenewalFailures": nil,
			"PrometheusMetricsProxyHookSemaphoresFull":       nil,
		}},
		{"sidecars over the limit", []map[string]any{
			{"series": m("lease_api_requests_total", `,operation="acquire",code="409"`), "values": "0 0 0 1 1 1 1 1 1 1 1"},
		}, "5m", map[string][]alert{
			"PrometheusMetricsProxyHookPodsOverLimit": {fires("", map[string]string{"severity": "warning"})},
		}},
		{"sidecars reacquire fine", []map[string]any{
			{"series": m("lease_api_requests_total", `,operation="acquire",code="200"`), "values": "0+1x10"},
			{"series": m("lease_api_requests_total", `,operation="acquire",code="409"`), "values": "0x10"},
		}, "5m", map[string][]alert{
			"PrometheusMetricsProxyHookPodsOverLimit": nil,
		}},
		{"releases piling up", []map[string]any{
			{"series": m("reconciler_releases_total", `,cause="no_pod"`), "values": "0+1x40"},
			{"series": m("reconciler_releases_total", `,cause="pod_deleted"`), "values": "0+5x40"},
		}, "35m", map[string][]alert{
			"PrometheusMetricsProxyHookReleasesPilingUp": {fires("", map[string]string{"severity": "warning"})},
		}},
		{"a few releases, deleted pods do not count", []map[string]any{
			{"series": m("reconciler_releases_total", `,cause="no_pod"`), "values": "0 1 2 3 3x40"},
			{"series": m("reconciler_releases_total", `,cause="pod_deleted"`), "values": "0+5x40"},
		}, "35m", map[string][]alert{
			"PrometheusMetricsProxyHookReleasesPilingUp": nil,
		}},
		{"reconciler failing", []map[string]any{
			{"series": m("reconciler_sweeps_total", `,result="error"`), "values": "0+4x60"},
			{"series": m("reconciler_sweeps_total", `,result="ok"`), "values": "100x60"},
		}, "40m", map[string][]alert{
			"PrometheusMetricsProxyHookReconcilerFailing": {fires("", map[string]string{"severity": "warning"})},
		}},
		{"reconciler recovering", []map[string]any{
			{"series": m("reconciler_sweeps_total", `,result="error"`), "values": "0+4x60"},
			{"series": m("reconciler_sweeps_total", `,result="ok"`), "values": "0+1x60"},
		}, "40m", map[string][]alert{
			"PrometheusMetricsProxyHookReconcilerFailing": nil,
		}},
		{"other releases do not count", []map[string]any{
			{"series": `prometheus_metrics_proxy_hook_redis_node_up{namespace="other",service="x",pod="w9",node="c"}`, "values": "0x30"},
			{"series": `prometheus_metrics_proxy_hook_redis_node_up{namespace="other",service="x",pod="w9",node="a"}`, "values": "1x30"},
		}, "20m", map[string][]alert{
			"PrometheusMetricsProxyHookRedisQuorumAtRisk": nil,
			"PrometheusMetricsProxyHookRedisNodeDown":     nil,
		}},
	}
	var units []map[string]any
	for _, tc := range tests {
		var checks []map[string]any
		for name, alerts := range tc.want {
			exp := []map[string]any{}
			for _, a := range alerts {
				exp = append(exp, map[string]any{"exp_labels": a["labels"]})
			}
			checks = append(checks, map[string]any{"eval_time": tc.at, "alertname": name, "exp_alerts": exp})
		}
		var series []map[string]any
		for _, s := range tc.series {
			series = append(series, map[string]any{"series": s["series"], "values": s["values"]})
		}
		units = append(units, map[string]any{"name": tc.name, "interval": "1m", "input_series": series, "alert_rule_test": checks})
	}
	testFile, err := yaml.Marshal(map[string]any{"rule_files": []string{"bare.json"}, "evaluation_interval": "1m", "tests": units})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tests.yaml"), testFile, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "test", "rules", "tests.yaml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, strings.TrimSpace(string(out)))
	}
}
