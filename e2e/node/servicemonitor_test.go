package node

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/prometheustest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/promk8s"
)

// monitoringNamespace holds the Prometheus resource; it is the namespace the
// chart's NetworkPolicy admits scrapes from by default.
const monitoringNamespace = "monitoring"

// TestServiceMonitorOnTheNode: prometheus-operator turns the chart's
// ServiceMonitor into scrape configuration and its PrometheusRule into rule
// files, and a real Prometheus on the host runs them: both webhook pods are
// targets at their pod IPs, their metrics carry the labels the operator's
// relabelling gives, and every rule of the chart is evaluated without error.
func TestServiceMonitorOnTheNode(t *testing.T) {
	c := sharedCluster(t)
	const name = "smon"
	c.kubectl(t, "create", "namespace", monitoringNamespace)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c.deleteNamespace(ctx, t, monitoringNamespace)
	})
	// Started first: it applies the operator's CRDs, without which helm
	// renders no ServiceMonitor.
	started := time.Now()
	prom := promk8s.StartFromServiceMonitors(t, c.Node.KubeconfigPath, monitoringNamespace, promk8s.ServiceMonitorOptions{
		Options: promk8s.Options{Namespaces: []string{releaseNamespace(name)}},
	})
	t.Logf("the CRDs, prometheus-operator and Prometheus on its first configuration took %s", since(started))
	r := c.installChart(t, installOptions{Name: name, CIValues: []string{"no-persistence-values.yaml"},
		Set: []string{"serviceMonitor.enabled=true", "serviceMonitor.interval=5s", "serviceMonitor.scrapeTimeout=2s", "prometheusRule.enabled=true"}})
	r.waitReady(t, true)

	podIPs := r.webhookPodIPs(t)
	want := map[string]string{"namespace": r.Namespace, "service": r.Fullname, "endpoint": "metrics"}
	started = time.Now()
	targets := prom.WaitForTargets(t, 3*time.Minute, want, len(podIPs))
	t.Logf("both webhook pods were scraped %s after they were Ready", since(started))
	checkWebhookTargets(t, r, targets, podIPs)

	query := fmt.Sprintf(`prometheus_metrics_proxy_hook_build_info{namespace=%q,service=%q,job=%q,endpoint="metrics",container="webhook"}`,
		r.Namespace, r.Fullname, r.Fullname)
	samples := prom.WaitFor(t, time.Minute, query, func(s []prometheustest.Sample) bool { return len(s) == len(podIPs) })
	for _, s := range samples {
		if _, ok := podIPs[s.Labels["pod"]]; !ok || s.Value != 1 || s.Labels["version"] == "" {
			t.Errorf("%s: sample %v = %v, want 1 with a version, from one of the pods %v", query, s.Labels, s.Value, podIPs)
		}
	}
	t.Run("PrometheusRule", func(t *testing.T) { checkChartRules(t, r, prom) })
}

// checkChartRules waits until Prometheus has evaluated every rule of the
// chart's PrometheusRule, from the file the operator wrote for it, and
// checks that none failed.
func checkChartRules(t *testing.T, r *release, prom *promk8s.Prometheus) {
	out := r.c.kubectl(t, "-n", r.Namespace, "get", "prometheusrule", r.Fullname, "-o",
		`jsonpath={.metadata.uid}{range .spec.groups[*].rules[*]}{" "}{.alert}{.record}{end}`)
	uid, names, _ := strings.Cut(out, " ")
	want := strings.Fields(names)
	if uid == "" || len(want) == 0 {
		t.Fatalf("the chart's PrometheusRule %s/%s has no uid or no rules: %q", r.Namespace, r.Fullname, out)
	}
	file := r.Namespace + "-" + r.Fullname + "-" + uid + ".yaml"
	var loaded []prometheustest.Rule
	r.c.timed(t, "the chart's rules evaluated", func(ctx context.Context) error {
		return r.c.poll(ctx, func() (bool, string, error) {
			rules, err := prom.Rules(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			loaded = slices.DeleteFunc(rules, func(rule prometheustest.Rule) bool { return filepath.Base(rule.File) != file })
			evaluated := !slices.ContainsFunc(loaded, func(rule prometheustest.Rule) bool { return rule.Health == "unknown" })
			return len(loaded) == len(want) && evaluated, fmt.Sprintf("%d of the %d rules loaded from %s: %+v", len(loaded), len(want), file, loaded), nil
		})
	})
	got := make([]string, 0, len(loaded))
	for _, rule := range loaded {
		got = append(got, rule.Name)
		if rule.Health != "ok" {
			t.Errorf("rule %s: health %q, last error %q", rule.Name, rule.Health, rule.LastError)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Prometheus loaded the rules %v from %s, want the PrometheusRule's %v", got, file, want)
	}
	t.Logf("Prometheus evaluated the %d rules of %s", len(loaded), file)
}

// checkWebhookTargets checks that targets are the webhook's pods, one each,
// scraped at their pod IPs in the scrape pool the operator names after the
// ServiceMonitor, and labelled as its relabelling does.
func checkWebhookTargets(t *testing.T, r *release, targets []prometheustest.Target, podIPs map[string]string) {
	t.Helper()
	pool := "serviceMonitor/" + r.Namespace + "/" + r.Fullname + "/0"
	seen := map[string]bool{}
	for _, tg := range targets {
		pod := tg.Labels["pod"]
		ip, ok := podIPs[pod]
		if !ok || seen[pod] {
			t.Errorf("target %s labels pod %q, want each of the webhook pods %v once", tg.ScrapeURL, pod, podIPs)
			continue
		}
		seen[pod] = true
		if want := "http://" + ip + ":8080/metrics"; tg.ScrapeURL != want {
			t.Errorf("pod %s is scraped at %s, want its pod IP: %s", pod, tg.ScrapeURL, want)
		}
		if tg.Job != pool {
			t.Errorf("pod %s is in the scrape pool %q, want the operator's %q", pod, tg.Job, pool)
		}
		if tg.Labels["job"] != r.Fullname || tg.Labels["container"] != "webhook" {
			t.Errorf("pod %s has job %q and container %q, want %q and webhook", pod, tg.Labels["job"], tg.Labels["container"], r.Fullname)
		}
	}
}

// webhookPodIPs maps the release's webhook pods to their pod IPs.
func (r *release) webhookPodIPs(t *testing.T) map[string]string {
	t.Helper()
	pods, err := r.pods(t.Context(), "webhook")
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]string{}
	for _, p := range pods {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			ips[p.Name] = p.Status.PodIP
		}
	}
	if len(ips) != 2 {
		t.Fatalf("the release has %d webhook pods with a pod IP, want the chart's 2: %v", len(ips), ips)
	}
	return ips
}
