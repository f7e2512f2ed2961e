// Package promk8s runs a real Prometheus that finds its targets through the
// Kubernetes API, the way it does in a cluster, for tests against the test
// control plane (src/testenv/kubetest) or the real node:
//
//   - StartPodDiscovering: kubernetes_sd_configs with role pod and the
//     conventional prometheus.io/* annotations, scraping pod IPs.
//   - StartFromServiceMonitors: prometheus-operator, run as a host process,
//     turns ServiceMonitors into scrape configuration with its own generator;
//     the harness loads what the operator wrote, as its config-reloader would.
//
// Prometheus is the one hack/install-tools.sh builds with Kubernetes service
// discovery (prometheus-k8s; Debian's has none). It runs on the host and
// reaches the API server through a kubeconfig file instead of the in-cluster
// service account. Every process is stopped when the test ends.
package promk8s

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/prometheustest"
)

const (
	// prometheusTool is Prometheus with Kubernetes service discovery, named
	// so that it does not shadow Debian's prometheus.
	prometheusTool = "prometheus-k8s"
	// defaultStartTimeout covers a loaded 2-core machine.
	defaultStartTimeout = 3 * time.Minute
	pollInterval        = 200 * time.Millisecond
)

// Options configure either kind of Prometheus. The zero value scrapes every
// second.
type Options struct {
	// ScrapeInterval is the global scrape interval; zero means 1 s. A
	// ServiceMonitor's own interval wins over it, as in a cluster.
	ScrapeInterval time.Duration
	// ScrapeTimeout is the global scrape timeout; zero means ScrapeInterval.
	ScrapeTimeout time.Duration
	// Namespaces limits pod discovery to these namespaces (empty: all). For
	// StartFromServiceMonitors they are watched besides the namespace of the
	// Prometheus resource.
	Namespaces []string
	// StartTimeout bounds the start of each process and the operator's first
	// configuration; zero means 3 minutes.
	StartTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.ScrapeInterval <= 0 {
		o.ScrapeInterval = time.Second
	}
	if o.ScrapeTimeout <= 0 || o.ScrapeTimeout > o.ScrapeInterval {
		o.ScrapeTimeout = o.ScrapeInterval
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = defaultStartTimeout
	}
	return o
}

// Prometheus is a running server. The embedded Server gives Query, Samples,
// Targets, WaitFor, URL, Dir and LogTail.
type Prometheus struct {
	*prometheustest.Server
	// operator is set for StartFromServiceMonitors.
	operator *operator
	config   func() string
}

// Config is the configuration Prometheus runs now.
func (p *Prometheus) Config() string { return p.config() }

// startServer runs prometheus-k8s with config.
func startServer(t testing.TB, config string, opts Options) *prometheustest.Server {
	t.Helper()
	bin, err := kubetest.Tool(prometheusTool)
	if err != nil {
		t.Fatal(err)
	}
	return prometheustest.Start(t, prometheustest.Options{Config: config, Binary: bin, ReadyTimeout: opts.StartTimeout})
}

// WaitForTarget waits until an active target carrying every label in want
// has been scraped successfully, and returns it. It fails the test on
// timeout, listing the targets it saw.
func (p *Prometheus) WaitForTarget(t testing.TB, timeout time.Duration, want map[string]string) prometheustest.Target {
	t.Helper()
	return p.WaitForTargets(t, timeout, want, 1)[0]
}

// WaitForTargets waits until n active targets carrying every label in want
// have been scraped successfully, and returns them. It fails the test on
// timeout, listing the targets it saw.
func (p *Prometheus) WaitForTargets(t testing.TB, timeout time.Duration, want map[string]string, n int) []prometheustest.Target {
	t.Helper()
	var (
		seen []prometheustest.Target
		up   []prometheustest.Target
	)
	err := p.poll(timeout, func(ctx context.Context) (bool, error) {
		targets, err := p.Targets(ctx)
		seen, up = targets, nil
		for _, tg := range matching(targets, want) {
			if tg.Health == "up" {
				up = append(up, tg)
			}
		}
		return len(up) >= n, err
	})
	if err != nil {
		t.Fatalf("prometheus: %d of %d targets with labels %v were up within %s (%v); targets: %s%s", len(up), n, want, timeout, err, describe(seen), p.operatorState())
	}
	return up
}

// WaitForNoTarget waits until no active target carries every label in want,
// as after the pod or endpoint behind it is gone.
func (p *Prometheus) WaitForNoTarget(t testing.TB, timeout time.Duration, want map[string]string) {
	t.Helper()
	var seen []prometheustest.Target
	err := p.poll(timeout, func(ctx context.Context) (bool, error) {
		targets, err := p.Targets(ctx)
		seen = targets
		return err == nil && len(matching(targets, want)) == 0, err
	})
	if err != nil {
		t.Fatalf("prometheus: a target with labels %v was still active after %s (%v); targets: %s", want, timeout, err, describe(seen))
	}
}

func (p *Prometheus) poll(timeout time.Duration, done func(ctx context.Context) (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ok, err := done(ctx)
		cancel()
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		if time.Now().After(deadline) {
			if lastErr == nil {
				lastErr = fmt.Errorf("timed out")
			}
			return lastErr
		}
		time.Sleep(pollInterval)
	}
}

func (p *Prometheus) operatorState() string {
	if p.operator == nil {
		return ""
	}
	return p.operator.state()
}

func matching(targets []prometheustest.Target, want map[string]string) []prometheustest.Target {
	var out []prometheustest.Target
	for _, tg := range targets {
		if hasLabels(tg.Labels, want) {
			out = append(out, tg)
		}
	}
	return out
}

func hasLabels(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func describe(targets []prometheustest.Target) string {
	if len(targets) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(targets))
	for _, tg := range targets {
		s := fmt.Sprintf("%s %s %s %v", tg.Job, tg.ScrapeURL, tg.Health, tg.Labels)
		if tg.LastError != "" {
			s += " (" + tg.LastError + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// LastSample is the newest sample stored within the last window for the one
// series selector matches, stale markers left out: after a target is gone,
// its final scrape is still there. It is an error when selector matches no
// series or more than one.
func (p *Prometheus) LastSample(ctx context.Context, selector string, window time.Duration) (prometheustest.Point, error) {
	series, err := p.Samples(ctx, selector, window)
	if err != nil {
		return prometheustest.Point{}, err
	}
	switch len(series) {
	case 0:
		return prometheustest.Point{}, fmt.Errorf("no series matches %s in the last %s", selector, window)
	case 1:
	default:
		return prometheustest.Point{}, fmt.Errorf("%d series match %s, not one: %v", len(series), selector, series)
	}
	last, ok := series[0].Last()
	if !ok {
		return prometheustest.Point{}, fmt.Errorf("the series %v has no samples in the last %s", series[0].Labels, window)
	}
	return last, nil
}

// LastPodSample is LastSample for metric scraped from one pod: both kinds of
// configuration label a pod's samples with namespace and pod.
func (p *Prometheus) LastPodSample(ctx context.Context, metric, namespace, pod string, window time.Duration) (prometheustest.Point, error) {
	return p.LastSample(ctx, fmt.Sprintf("%s{namespace=%q,pod=%q}", metric, namespace, pod), window)
}

// promDuration writes d in Prometheus's duration syntax (whole
// milliseconds).
func promDuration(d time.Duration) string {
	return fmt.Sprintf("%dms", d.Milliseconds())
}
