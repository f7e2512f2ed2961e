package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// leases lists the semaphore's leases as the release's Redis pods hold
// them, read from the host at the pods' addresses with the chart's
// password. A pod without an address counts as a node that does not
// answer, so the quorum stays that of the chart's three nodes.
func (r *release) leases(ctx context.Context, name string, size int) ([]semaphore.HeldLease, error) {
	pods, err := r.pods(ctx, "redis")
	if err != nil {
		return nil, err
	}
	addrs := make([]string, redisReplicas)
	for i := range addrs {
		addrs[i] = "127.0.0.1:1"
		for _, p := range pods {
			if p.Name == fmt.Sprintf("%s-redis-%d", r.Fullname, i) && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
				addrs[i] = net.JoinHostPort(p.Status.PodIP, "6379")
			}
		}
	}
	out, err := r.c.Node.Kubectl(ctx, "-n", r.Namespace, "get", "secret", r.Fullname+"-redis-auth", "-o", "jsonpath={.data.redis-password}")
	if err != nil {
		return nil, err
	}
	password, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(out)))
	if err != nil {
		return nil, fmt.Errorf("decoding the Redis password: %w", err)
	}
	client, err := semaphore.New(semaphore.Config{Addrs: addrs, Password: string(password), NodeTimeout: 500 * time.Millisecond, MaxIdle: 1})
	if err != nil {
		return nil, err
	}
	defer client.Close()
	return client.Leases(ctx, name, size)
}

// pods lists the release's pods of one component (webhook, redis).
func (r *release) pods(ctx context.Context, component string) ([]corev1.Pod, error) {
	var list corev1.PodList
	err := r.c.getJSON(ctx, &list, "-n", r.Namespace, "pods",
		"-l", "app.kubernetes.io/instance="+r.Name+",app.kubernetes.io/component="+component)
	return list.Items, err
}

// webhookMetrics reads /metrics of every running webhook pod whose image
// has the tag ("" for any), at the pod's address (the node is this
// machine).
func (r *release) webhookMetrics(ctx context.Context, tag string) ([]map[string]*dto.MetricFamily, error) {
	pods, err := r.pods(ctx, "webhook")
	if err != nil {
		return nil, err
	}
	var all []map[string]*dto.MetricFamily
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" ||
			(tag != "" && !strings.HasSuffix(p.Spec.Containers[0].Image, ":"+tag)) {
			continue
		}
		families, err := scrapeMetrics(ctx, "http://"+net.JoinHostPort(p.Status.PodIP, "8080")+"/metrics")
		if err != nil {
			return nil, fmt.Errorf("webhook pod %s: %w", p.Name, err)
		}
		all = append(all, families)
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("no running webhook pod (image tag %q) in %s", tag, r.Namespace)
	}
	return all, nil
}

func scrapeMetrics(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s answered %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// metricSum adds the samples of a counter or gauge over every scrape,
// keeping those whose labels include labels.
func metricSum(scrapes []map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	sum := 0.0
	for _, families := range scrapes {
		f, ok := families[name]
		if !ok {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// leaseAPIAnswer is the status and error body of a lease API call.
type leaseAPIAnswer struct {
	Status int
	Body   string
}

// callLeaseAPI posts body to the lease API through the webhook's Service
// (its ClusterIP, routed by kube-proxy on this machine), with no token: as a
// sidecar of the previous release calls it, or anyone who read a holder id.
func (r *release) callLeaseAPI(ctx context.Context, path string, body any) (leaseAPIAnswer, error) {
	out, err := r.c.Node.Kubectl(ctx, "-n", r.Namespace, "get", "service", r.Fullname, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return leaseAPIAnswer{}, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.c.CA.PEM)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: r.Fullname + "." + r.Namespace + ".svc", MinVersion: tls.VersionTLS12},
	}}
	defer client.CloseIdleConnections()
	data, err := json.Marshal(body)
	if err != nil {
		return leaseAPIAnswer{}, err
	}
	url := "https://" + net.JoinHostPort(strings.TrimSpace(string(out)), "443") + path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(data))
	if err != nil {
		return leaseAPIAnswer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return leaseAPIAnswer{}, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return leaseAPIAnswer{Status: resp.StatusCode, Body: string(answer)}, err
}

// observation is one look at the workload's semaphore.
type observation struct {
	At       time.Time
	Leases   []semaphore.HeldLease
	LeaseErr error
}

// holderTTL is the longest remaining TTL of the holder's lease, and
// whether the observation saw it held.
func (o observation) holderTTL(holder string) (time.Duration, bool) {
	for _, l := range o.Leases {
		if l.Holder == holder {
			return l.TTL, true
		}
	}
	return 0, false
}

// watcher looks at the workload's semaphore every pollInterval until
// stopped, so that the test can check what held all along, not only at the
// moments it asserts something: each lease it keeps held on a quorum in
// every look that reached one. It keeps the first breach, for the test's
// waits to fail on at once. How many apps ran at once is not its job: the
// container runtime's own start and finish times answer that exactly
// (cri.Recorder), where the API server's pod status lags the kubelet.
type watcher struct {
	mu      sync.Mutex
	seen    []observation
	keep    map[string]string
	failure error
	stop    context.CancelFunc
	done    chan struct{}
}

// watch starts a watcher that keeps the holders (by pod) held; it stops
// when t ends, or earlier with end.
func watch(t *testing.T, r *release, w workload, holders map[string]string) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	wt := &watcher{keep: maps.Clone(holders), stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(wt.done)
		tick := time.NewTicker(pollInterval)
		defer tick.Stop()
		for {
			o := observation{At: time.Now()}
			step, cancelStep := context.WithTimeout(ctx, 5*time.Second)
			o.Leases, o.LeaseErr = r.leases(step, w.Namespace+"/"+w.Key, w.Size)
			cancelStep()
			if ctx.Err() != nil {
				return
			}
			wt.add(o)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(wt.end)
	return wt
}

func (wt *watcher) add(o observation) {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	wt.seen = append(wt.seen, o)
	if wt.failure != nil {
		return
	}
	if o.LeaseErr != nil {
		return
	}
	at := o.At.Format(time.TimeOnly)
	for _, pod := range slices.Sorted(maps.Keys(wt.keep)) {
		if _, held := o.holderTTL(wt.keep[pod]); !held {
			wt.failure = fmt.Errorf("at %s, %s's lease (holder %s...) was lost: not held on a quorum of the Redis nodes, which hold %s",
				at, pod, wt.keep[pod][:8], describeLeases(o.Leases))
			return
		}
	}
}

// letGo stops requiring the pod's lease: its pod is being deleted.
func (wt *watcher) letGo(pod string) {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	delete(wt.keep, pod)
}

// err is the first breach seen, nil while there was none.
func (wt *watcher) err() error {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	return wt.failure
}

// guard makes a poll check fail as soon as the watcher saw a breach.
func (wt *watcher) guard(check func() (bool, string, error)) func() (bool, string, error) {
	return func() (bool, string, error) {
		if err := wt.err(); err != nil {
			return false, "", err
		}
		return check()
	}
}

// end stops the watcher and waits for it.
func (wt *watcher) end() {
	wt.stop()
	<-wt.done
}

// observations returns what the watcher saw so far.
func (wt *watcher) observations() []observation {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	return slices.Clone(wt.seen)
}

func describeLeases(leases []semaphore.HeldLease) string {
	if len(leases) == 0 {
		return "no lease"
	}
	parts := make([]string, len(leases))
	for i, l := range leases {
		record := "no record"
		if l.Record != nil {
			record = "record of pod " + l.Record.Pod
		}
		parts[i] = fmt.Sprintf("slot %d: holder %s... on %d nodes, %s left, %s", l.Slot, l.Holder[:8], l.Nodes, l.TTL.Round(100*time.Millisecond), record)
	}
	return strings.Join(parts, "; ")
}

// refreshes counts the observations since after in which the holder's TTL
// was longer than in the one before: each is a renewal that reached Redis.
func refreshes(seen []observation, holder string, after time.Time) int {
	n := 0
	var last time.Duration
	known := false
	for _, o := range seen {
		ttl, held := o.holderTTL(holder)
		if o.LeaseErr != nil || !held {
			continue
		}
		if known && o.At.After(after) && ttl > last+time.Second {
			n++
		}
		last, known = ttl, true
	}
	return n
}
