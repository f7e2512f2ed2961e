package e2e

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/webhookconfig"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/sidecartest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

const (
	// leaseTTL is the shared webhook's --lease-ttl: short, so that a
	// sidecar renews several times within seconds.
	leaseTTL = 2 * time.Second
	// sidecarPort and scrapeInterval are the webhook's defaults, which
	// the injected pods carry.
	sidecarPort    = 65532
	scrapeInterval = time.Minute
)

// denied is the error line kubectl prints when the webhook refuses a pod
// read from stdin.
func denied(reason, message string) string {
	return fmt.Sprintf("Error from server (%s): error when creating \"STDIN\": admission webhook %q denied the request: %s\n", reason, webhookName, message)
}

// fullMessage matches a full semaphore's denial, which names the pods
// holding its slots with the slot and age of each; pods are patterns.
func fullMessage(namespace, key string, held, size int, pods ...string) *regexp.Regexp {
	holders := make([]string, len(pods))
	for i, p := range pods {
		holders[i] = "pod " + p + ` \(slot [0-9]+, for [0-9hms]+\)`
	}
	return regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf("semaphore %q is full (%d/%d slots held); its slots are held by ", namespace+"/"+key, held, size)) +
		strings.Join(holders, ", ") + regexp.QuoteMeta("; the pod will be created when a slot frees up"))
}

// deniedFull matches kubectl's line for a full semaphore's denial.
func deniedFull(namespace, key string, held, size int, pods ...string) *regexp.Regexp {
	prefix := strings.TrimSuffix(denied("TooManyRequests", ""), "\n")
	return regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + fullMessage(namespace, key, held, size, pods...).String() + "\n$")
}

func testScenarios(t *testing.T, e *env) {
	wh := e.startWebhook(t, "--lease-ttl="+leaseTTL.String())
	shared := e.installTarget(t, "pmph", nil, wh)
	scenarios := []struct {
		name string
		run  func(t *testing.T, e *env, target *webhookTarget)
	}{
		{"1-pod-without-annotation-untouched", scenarioUntouched},
		{"2-injected-pod-passes-restricted", scenarioRestricted},
		{"3-4-semaphore-full-then-sidecar-releases", scenarioSemaphore},
		{"5-server-dry-run-takes-no-slot", scenarioDryRun},
		{"6-webhook-down", func(t *testing.T, e *env, _ *webhookTarget) { scenarioWebhookDown(t, e) }},
		{"7-bad-annotations", scenarioBadAnnotations},
		{"8-startup-timeout-frees-slot", scenarioStartupTimeout},
		{"9-deployment-on-a-semaphore", scenarioDeployment},
		{"10-no-redis-quorum", scenarioNoQuorum},
		{"11-leaks-released-by-the-reconciler", scenarioLeaks},
	}
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			s.run(t, e, shared)
		})
	}
}

// 1. A pod without the opt-in annotation is stored exactly as sent: the
// chart's matchConditions keep it from the webhook altogether. So is a pod
// whose opt-in value is anything but "true".
func scenarioUntouched(t *testing.T, e *env, target *webhookTarget) {
	ns := "s1-untouched"
	e.served(t, ns, target, nil)
	cases := []struct {
		name        string
		annotations map[string]string
	}{
		{"plain", map[string]string{"team": "payments"}},
		{"opted-out", map[string]string{admission.AnnotationOptIn: "false", admission.AnnotationPort: "8080"}},
		{"not-exactly-true", map[string]string{admission.AnnotationOptIn: "True", admission.AnnotationPort: "8080"}},
	}
	for _, c := range cases {
		res := e.mustKctl(t, manifest(t, pod(c.name, c.annotations)), "create", "-n", ns, "-f", "-")
		if res.Stdout != "pod/"+c.name+" created\n" || res.Stderr != "" {
			t.Errorf("%s: kubectl printed %q and %q", c.name, res.Stdout, res.Stderr)
		}
		got := e.getPod(t, ns, c.name)
		if len(got.Spec.Containers) != 1 || got.Spec.Containers[0].Name != "app" || len(got.Spec.InitContainers) != 0 {
			t.Errorf("%s: the containers were changed: %+v", c.name, got.Spec.Containers)
		}
		if !maps.Equal(got.Annotations, c.annotations) {
			t.Errorf("%s: annotations %v, want %v unchanged", c.name, got.Annotations, c.annotations)
		}
		if g := got.Spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
			t.Errorf("%s: terminationGracePeriodSeconds %v, want the API server's default 30", c.name, g)
		}
	}
}

// 2. An opted-in pod gets the sidecar, the rewritten port and the webhook's
// annotations, and the API server's PodSecurity admission accepts the
// result in a namespace that enforces the restricted standard.
func scenarioRestricted(t *testing.T, e *env, target *webhookTarget) {
	ns := "s2-restricted"
	e.served(t, ns, target, restricted())

	// PodSecurity really enforces here: a pod without the restricted
	// settings is refused.
	loose := pod("loose", nil, func(p *corev1.Pod) {
		p.Spec.SecurityContext = nil
		p.Spec.Containers[0].SecurityContext = nil
	})
	res := e.kctl(t, manifest(t, loose), "create", "-n", ns, "-f", "-")
	if res.OK() || !strings.Contains(res.Stderr, `violates PodSecurity "restricted:latest"`) {
		t.Fatalf("a pod without the restricted settings was not refused by PodSecurity: exit %d, %q", res.ExitCode, res.Stderr)
	}

	res = e.mustKctl(t, manifest(t, pod("app", optIn(8080))), "create", "-n", ns, "-f", "-")
	if res.Stdout != "pod/app created\n" || res.Stderr != "" {
		t.Errorf("kubectl printed %q and %q; want only the creation, no warning", res.Stdout, res.Stderr)
	}
	got := e.getPod(t, ns, "app")
	c := container(got, admission.ContainerName)
	if c == nil {
		t.Fatalf("no container %q was injected: %+v", admission.ContainerName, got.Spec.Containers)
	}
	// The webhook's default injects a native sidecar: the first init
	// container, restartPolicy Always.
	if len(got.Spec.Containers) != 1 || got.Spec.Containers[0].Name != "app" ||
		len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].Name != admission.ContainerName ||
		c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("containers %v, init containers %v, want the app's and the sidecar as the native first init container", names(got.Spec.Containers), names(got.Spec.InitContainers))
	}
	if !slices.Equal(c.Command, []string{admission.SidecarCommand}) || len(c.Args) != 0 {
		t.Errorf("the sidecar runs command %q args %q, want command [%s] without args", c.Command, c.Args, admission.SidecarCommand)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != admission.SidecarPortName || c.Ports[0].ContainerPort != sidecarPort {
		t.Errorf("the sidecar's ports are %+v, want %s %d", c.Ports, admission.SidecarPortName, sidecarPort)
	}
	wantAnn := map[string]string{
		admission.AnnotationOptIn:    "true",
		admission.AnnotationPort:     strconv.Itoa(sidecarPort),
		admission.AnnotationInjected: "true",
	}
	if !maps.Equal(got.Annotations, wantAnn) {
		t.Errorf("annotations %v, want %v", got.Annotations, wantAnn)
	}
	// The pod's own 30 s (the API server's default) for the app, plus one
	// scrape interval and 10 s for the sidecar's final scrape.
	if g := got.Spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second != 30*time.Second+scrapeInterval+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v, want 30s + scrape-interval + 10s", g)
	}
	env := envOf(c)
	wantEnv := map[string]string{
		"PMPH_LISTEN_ADDRESS": ":" + strconv.Itoa(sidecarPort),
		"PMPH_UPSTREAM":       "http://127.0.0.1:8080/metrics",
	}
	for k, v := range wantEnv {
		if env[k] != v {
			t.Errorf("env %s=%q, want %q", k, env[k], v)
		}
	}
	for k := range env {
		if strings.HasPrefix(k, "PMPH_LEASE_") {
			t.Errorf("a pod without a semaphore got %s", k)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("the sidecar's securityContext is %+v", sc)
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// metricsApp stands in for the application whose metrics the sidecar
// proxies; it listens on loopback, where the pod's upstream points.
func metricsApp(t *testing.T) (port int, body string, stop func()) {
	t.Helper()
	body = "# TYPE app_jobs_done_total counter\napp_jobs_done_total 42\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	stop = srv.Close
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	port, err = strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return port, body, stop
}

// 3. and 4. Semaphore of size 2: pods 1 and 2 are created, pod 3 is refused
// with the message kubectl shows. Then the sidecar binary runs with exactly
// the arguments and environment the webhook injected into pod 1, renews the
// lease across several TTLs, and on SIGTERM releases the slot: pod 3 is
// created.
func scenarioSemaphore(t *testing.T, e *env, target *webhookTarget) {
	ns, key := "s3-semaphore", "workers"
	e.served(t, ns, target, nil)
	appPort, appBody, stopApp := metricsApp(t)
	// The startup timeout is long, so that a slot that stays held past a
	// few TTLs can only be the sidecar's renewals at work.
	ann := gated(optIn(appPort), key, 2, "10m")

	for _, name := range []string{"pod-1", "pod-2"} {
		res := e.mustKctl(t, manifest(t, pod(name, ann)), "create", "-n", ns, "-f", "-")
		if res.Stdout != "pod/"+name+" created\n" {
			t.Fatalf("kubectl printed %q", res.Stdout)
		}
	}
	if st := e.inspect(t, ns, key, 2); st.Held() != 2 {
		t.Fatalf("%d slots held after two pods, want 2", st.Held())
	}
	res := e.kctl(t, manifest(t, pod("pod-3", ann)), "create", "-n", ns, "-f", "-")
	if want := deniedFull(ns, key, 2, 2, "pod-[12]", "pod-[12]"); res.OK() || !want.MatchString(res.Stderr) {
		t.Fatalf("pod-3: exit %d, kubectl printed\n%q\nwant\n%q", res.ExitCode, res.Stderr, want)
	}
	if e.podExists(t, ns, "pod-3") {
		t.Fatal("pod-3 was stored although it was refused")
	}

	// 4. The sidecar of pod 1, as the kubelet would start it.
	p1 := e.getPod(t, ns, "pod-1")
	c := container(p1, admission.ContainerName)
	if c == nil {
		t.Fatal("pod-1 has no sidecar")
	}
	if !slices.Equal(c.Command, []string{admission.SidecarCommand}) {
		t.Fatalf("the sidecar runs command %q args %q; this test starts the sidecar binary in its place", c.Command, c.Args)
	}
	holder := p1.Annotations[admission.AnnotationHolder]
	slot, err := strconv.Atoi(p1.Annotations[admission.AnnotationSemaphoreSlot])
	if err != nil || holder == "" {
		t.Fatalf("pod-1 has slot %q and holder %q", p1.Annotations[admission.AnnotationSemaphoreSlot], holder)
	}
	var env []string
	for _, v := range c.Env {
		if v.ValueFrom != nil {
			t.Fatalf("env %s comes from %+v, which only a kubelet can resolve", v.Name, v.ValueFrom)
		}
		value := v.Value
		switch v.Name {
		case "PMPH_LISTEN_ADDRESS":
			// The only replacement: outside a pod's network namespace the
			// fixed port 65532 may be taken (by a parallel test, the demo),
			// so the sidecar listens on a free loopback port.
			value = "127.0.0.1:0"
		case "PMPH_UPSTREAM":
			if want := fmt.Sprintf("http://127.0.0.1:%d/metrics", appPort); value != want {
				t.Fatalf("PMPH_UPSTREAM is %q, want %q", value, want)
			}
		case "PMPH_LEASE_HOLDER":
			if value != holder {
				t.Fatalf("PMPH_LEASE_HOLDER %q differs from the holder annotation %q", value, holder)
			}
		case "PMPH_LEASE_SLOT":
			if value != strconv.Itoa(slot) {
				t.Fatalf("PMPH_LEASE_SLOT %q differs from the slot annotation %d", value, slot)
			}
		case "PMPH_LEASE_TOKEN_FILE":
			// What the kubelet would project there: a token bound to pod-1
			// for the volume's audience, from the TokenRequest API.
			value = e.podToken(t, p1)
		}
		env = append(env, v.Name+"="+value)
	}
	sc := sidecartest.Start(t, sidecartest.Options{Env: env, Args: c.Args})

	// The first renewal turns the 10-minute startup lease into a lease of
	// the webhook's TTL.
	eventually(t, stepTimeout, 50*time.Millisecond, "the sidecar's first renewal", func() error {
		s := e.inspect(t, ns, key, 2).Slots[slot]
		if s.Holder != holder {
			return fmt.Errorf("slot %d is held by %q, not pod-1's %q", slot, s.Holder, holder)
		}
		if ttl := slices.Max(s.TTLs); ttl > leaseTTL {
			return fmt.Errorf("the slot's TTL is still %s", ttl)
		}
		return nil
	})
	// It stays held across several TTLs: only renewals keep it.
	renewedAt := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	for time.Since(renewedAt) < 4*leaseTTL {
		if s := e.inspect(t, ns, key, 2).Slots[slot]; s.Holder != holder {
			t.Fatalf("slot %d was lost %s after the first renewal (holder now %q); sidecar log:\n%s", slot, time.Since(renewedAt), s.Holder, sc.Logs())
		}
		<-tick.C
	}
	tick.Stop()
	if n := sidecarCounter(t, sc, `prometheus_metrics_proxy_hook_sidecar_lease_operations_total{operation="renew",result="ok"}`); n < 4 {
		t.Errorf("the sidecar renewed %v times in %s, want at least 4 with a TTL of %s", n, 4*leaseTTL, leaseTTL)
	}

	// Prometheus scrapes the pod through the sidecar...
	if got := scrape(t, sc.URL()+"/metrics"); got != appBody {
		t.Errorf("a scrape through the sidecar returned %q, want the app's %q", got, appBody)
	}
	// ...the pod is deleted. With a native sidecar the kubelet signals the
	// sidecar only after the app exited: the app stops, then SIGTERM.
	// Prometheus already holds the app's last state (nothing changed since
	// that scrape), so the sidecar does not wait a scrape interval for
	// another; it gives the slot back and exits.
	stopApp()
	signalled := time.Now()
	if err := sc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := sc.Wait(stepTimeout)
	if err != nil || code != 0 {
		t.Fatalf("the sidecar exited with %d (%v) after SIGTERM; log:\n%s", code, err, sc.Logs())
	}
	if took := time.Since(signalled); took > scrapeInterval/2 {
		t.Errorf("the sidecar took %s to exit after SIGTERM although its scraper had the app's last state", took)
	}
	if len(sc.Find("info", "The final scrape was answered")) != 1 {
		t.Errorf("the sidecar did not log that every scraper had the last state; log:\n%s", sc.Logs())
	}
	if len(sc.Find("info", "Released the semaphore slot.")) != 1 {
		t.Errorf("the sidecar did not log the release; log:\n%s", sc.Logs())
	}
	if s := e.inspect(t, ns, key, 2); s.Slots[slot].Holder != "" || s.Held() != 1 {
		t.Fatalf("after the release slot %d is held by %q and %d slots are held, want it free and 1 held", slot, s.Slots[slot].Holder, s.Held())
	}

	res = e.mustKctl(t, manifest(t, pod("pod-3", ann)), "create", "-n", ns, "-f", "-")
	if res.Stdout != "pod/pod-3 created\n" {
		t.Errorf("kubectl printed %q", res.Stdout)
	}
	if st := e.inspect(t, ns, key, 2); st.Held() != 2 {
		t.Errorf("%d slots held after pod-3 was created, want 2", st.Held())
	}
}

// scrape GETs url as Prometheus would and returns the body.
func scrape(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 20 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s %v", url, resp.Status, err)
	}
	return string(body)
}

// sidecarCounter reads one sample from the sidecar's own metrics.
func sidecarCounter(t *testing.T, sc *sidecartest.Sidecar, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape(t, sc.URL()+"/-/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("cannot parse %q: %v", line, err)
			}
			return n
		}
	}
	return 0
}

// 5. `kubectl create --dry-run=server` shows the patched pod, with a warning
// that no slot was taken, and indeed takes none.
func scenarioDryRun(t *testing.T, e *env, target *webhookTarget) {
	ns, key := "s5-dry-run", "preview"
	e.served(t, ns, target, nil)
	ann := gated(optIn(8080), key, 1, "")
	for range 2 {
		res := e.mustKctl(t, manifest(t, pod("app", ann)), "create", "--dry-run=server", "-o", "yaml", "-n", ns, "-f", "-")
		if want := "Warning: dry run: no semaphore slot was taken\n"; res.Stderr != want {
			t.Errorf("kubectl printed %q on stderr, want %q", res.Stderr, want)
		}
		var got corev1.Pod
		if err := yaml.Unmarshal([]byte(res.Stdout), &got); err != nil {
			t.Fatalf("cannot parse kubectl's YAML: %v\n%s", err, res.Stdout)
		}
		c := container(&got, admission.ContainerName)
		if c == nil {
			t.Fatalf("the dry run shows no sidecar:\n%s", res.Stdout)
		}
		if got.Annotations[admission.AnnotationInjected] != "true" || got.Annotations[admission.AnnotationPort] != strconv.Itoa(sidecarPort) {
			t.Errorf("the dry run's annotations are %v", got.Annotations)
		}
		for _, a := range []string{admission.AnnotationHolder, admission.AnnotationSemaphoreSlot} {
			if _, ok := got.Annotations[a]; ok {
				t.Errorf("the dry run carries %s although it took no slot", a)
			}
		}
		env := envOf(c)
		if env["PMPH_LEASE_KEY"] != key || env["PMPH_LEASE_SIZE"] != "1" {
			t.Errorf("the dry run's lease env is %v", env)
		}
		if _, ok := env["PMPH_LEASE_HOLDER"]; ok {
			t.Error("the dry run's sidecar has a holder although no slot was taken")
		}
	}
	if st := e.inspect(t, ns, key, 1); st.Held() != 0 {
		t.Fatalf("%d slots held after two dry runs, want 0", st.Held())
	}
	if e.podExists(t, ns, "app") {
		t.Fatal("a dry run stored the pod")
	}
	// The semaphore is live in this namespace: the real creation takes the
	// only slot.
	e.mustKctl(t, manifest(t, pod("app", ann)), "create", "-n", ns, "-f", "-")
	got := e.getPod(t, ns, "app")
	if st := e.inspect(t, ns, key, 1); st.Held() != 1 || st.Slots[0].Holder != got.Annotations[admission.AnnotationHolder] {
		t.Errorf("after the real creation %d slots are held (slot 0 by %q), want pod app's holder %q", st.Held(), st.Slots[0].Holder, got.Annotations[admission.AnnotationHolder])
	}
}

// 6. The webhook is down. With failurePolicy Ignore opted-in pods are created
// without the sidecar; with Fail they are refused; pods that did not opt in
// are created either way, because matchConditions keep the API server from
// calling the webhook for them.
func scenarioWebhookDown(t *testing.T, e *env) {
	wh := e.startWebhook(t)
	ignore := e.installTarget(t, "outage-ignore", map[string]any{"webhook": map[string]any{"failurePolicy": "Ignore"}}, wh)
	fail := e.installTarget(t, "outage-fail", nil, wh)
	for target, want := range map[*webhookTarget]string{ignore: "Ignore", fail: "Fail"} {
		mwc, err := webhookconfig.Get(t.Context(), e.cp, target.mwc)
		if err != nil {
			t.Fatal(err)
		}
		w := mwc.Webhooks[0]
		if w.FailurePolicy == nil || string(*w.FailurePolicy) != want || len(w.MatchConditions) == 0 || w.ClientConfig.URL == nil {
			t.Fatalf("%s: failurePolicy %v, %d matchConditions, url %v", target.mwc, w.FailurePolicy, len(w.MatchConditions), w.ClientConfig.URL)
		}
	}
	// Both namespaces are served while the webhook is up.
	e.served(t, "s6-ignore", ignore, nil)
	e.served(t, "s6-fail", fail, nil)
	url := "https://" + wh.Addr() + "/mutate?timeout=5s"
	if code, err := wh.Stop(); err != nil || code != 0 {
		t.Fatalf("the webhook did not stop cleanly: exit %d, %v", code, err)
	}

	ann := gated(optIn(8080), "outage", 1, "")
	res := e.mustKctl(t, manifest(t, pod("opted-in", ann)), "create", "-n", "s6-ignore", "-f", "-")
	if res.Stdout != "pod/opted-in created\n" {
		t.Errorf("Ignore: kubectl printed %q", res.Stdout)
	}
	got := e.getPod(t, "s6-ignore", "opted-in")
	if container(got, admission.ContainerName) != nil || !maps.Equal(got.Annotations, ann) {
		t.Errorf("Ignore: the pod was changed while the webhook was down: containers %v, annotations %v", names(got.Spec.Containers), got.Annotations)
	}

	res = e.kctl(t, manifest(t, pod("opted-in", ann)), "create", "-n", "s6-fail", "-f", "-")
	wantPrefix := fmt.Sprintf("Error from server (InternalError): error when creating \"STDIN\": Internal error occurred: failed calling webhook %q: failed to call webhook: Post %q: ", webhookName, url)
	if res.OK() || !strings.HasPrefix(res.Stderr, wantPrefix) {
		t.Errorf("Fail: exit %d, kubectl printed\n%q\nwant it to start with\n%q", res.ExitCode, res.Stderr, wantPrefix)
	} else {
		t.Logf("Fail: kubectl printed %s", strings.TrimSpace(res.Stderr))
	}
	if e.podExists(t, "s6-fail", "opted-in") {
		t.Error("Fail: the opted-in pod was stored while the webhook was down")
	}

	for _, ns := range []string{"s6-ignore", "s6-fail"} {
		res := e.mustKctl(t, manifest(t, pod("plain", nil)), "create", "-n", ns, "-f", "-")
		if res.Stdout != "pod/plain created\n" || res.Stderr != "" {
			t.Errorf("%s: a pod without the annotation: kubectl printed %q and %q", ns, res.Stdout, res.Stderr)
		}
	}
}

// 7. Every bad annotation is refused with a message that names the
// annotation, the value and the rule.
func scenarioBadAnnotations(t *testing.T, e *env, target *webhookTarget) {
	ns := "s7-bad-annotations"
	e.served(t, ns, target, nil)
	const p = admission.Prefix
	with := func(extra map[string]string, drop ...string) map[string]string {
		a := optIn(8080)
		maps.Copy(a, extra)
		for _, d := range drop {
			delete(a, d)
		}
		return a
	}
	addPort := func(port int32) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: port})
		}
	}
	cases := []struct {
		name        string
		annotations map[string]string
		mutate      func(*corev1.Pod)
		message     string
	}{
		{"size-zero", with(map[string]string{p + "semaphore-key": "k", p + "semaphore-size": "0"}), nil,
			`annotation ` + p + `semaphore-size "0" must be an integer from 1 to 1024`},
		{"size-too-big", with(map[string]string{p + "semaphore-key": "k", p + "semaphore-size": "1025"}), nil,
			`annotation ` + p + `semaphore-size "1025" must be an integer from 1 to 1024`},
		{"size-not-a-number", with(map[string]string{p + "semaphore-key": "k", p + "semaphore-size": "two"}), nil,
			`annotation ` + p + `semaphore-size "two" must be an integer from 1 to 1024`},
		{"key-without-size", with(map[string]string{p + "semaphore-key": "k"}), nil,
			`annotation ` + p + `semaphore-size is required with ` + p + `semaphore-key "k"; set it to the number of slots, an integer from 1 to 1024`},
		{"size-without-key", with(map[string]string{p + "semaphore-size": "2"}), nil,
			`annotation ` + p + `semaphore-size "2" is set but annotation ` + p + `semaphore-key is missing; name the semaphore or remove the size`},
		{"bad-key", with(map[string]string{p + "semaphore-key": "-workers", p + "semaphore-size": "2"}), nil,
			`annotation ` + p + `semaphore-key "-workers" must be 1 to 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit`},
		{"timeout-too-short", with(map[string]string{p + "semaphore-key": "k", p + "semaphore-size": "1", p + "semaphore-startup-timeout": "500ms"}), nil,
			`annotation ` + p + `semaphore-startup-timeout "500ms" must be a Go duration from 1s to 1h, e.g. 5m`},
		{"timeout-too-long", with(map[string]string{p + "semaphore-key": "k", p + "semaphore-size": "1", p + "semaphore-startup-timeout": "2h"}), nil,
			`annotation ` + p + `semaphore-startup-timeout "2h" must be a Go duration from 1s to 1h, e.g. 5m`},
		{"timeout-not-a-duration", with(map[string]string{p + "semaphore-key": "k", p + "semaphore-size": "1", p + "semaphore-startup-timeout": "soon"}), nil,
			`annotation ` + p + `semaphore-startup-timeout "soon" must be a Go duration from 1s to 1h, e.g. 5m`},
		{"port-zero", with(map[string]string{"prometheus.io/port": "0"}), nil,
			`annotation prometheus.io/port "0" must be a port number from 1 to 65535 or the name of a container port`},
		{"port-too-big", with(map[string]string{"prometheus.io/port": "70000"}), nil,
			`annotation prometheus.io/port "70000" must be a port number from 1 to 65535 or the name of a container port`},
		{"port-bad-name", with(map[string]string{"prometheus.io/port": "Metrics!"}), nil,
			`annotation prometheus.io/port "Metrics!" must be a port number from 1 to 65535 or the name of a container port`},
		{"port-unknown-name", with(map[string]string{"prometheus.io/port": "web"}), nil,
			`annotation prometheus.io/port "web" names no container port; use a port number or the name of a container port`},
		{"port-is-the-sidecars", with(map[string]string{"prometheus.io/port": "65532"}), nil,
			`annotation prometheus.io/port "65532" is the port of the injected metrics proxy (65532); the application must serve its metrics on another port`},
		{"path-without-slash", with(map[string]string{"prometheus.io/path": "metrics"}), nil,
			`annotation prometheus.io/path "metrics" must be a URL path that starts with "/", at most 1024 characters without spaces or control characters`},
		{"no-port-at-all", with(nil, "prometheus.io/port"), nil,
			`annotation prometheus.io/port is absent and no container port is named "metrics"; set prometheus.io/port to the port of the application's metrics endpoint`},
		{"container-uses-sidecar-port", with(nil), addPort(sidecarPort),
			`container "app" declares port 65532, which the injected metrics proxy listens on in the pod's network namespace; move the container's port`},
		{"container-named-like-sidecar", with(nil), func(p *corev1.Pod) {
			extra := p.Spec.Containers[0]
			extra.Name = admission.ContainerName
			p.Spec.Containers = append(p.Spec.Containers, extra)
		}, `container "prometheus-metrics-proxy" already exists but the pod has no annotation ` + p + `injected: "true"; rename the container, the webhook injects one of that name`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var mutate []func(*corev1.Pod)
			if c.mutate != nil {
				mutate = append(mutate, c.mutate)
			}
			res := e.kctl(t, manifest(t, pod(c.name, c.annotations, mutate...)), "create", "-n", ns, "-f", "-")
			if want := denied("BadRequest", c.message); res.OK() || res.Stderr != want {
				t.Errorf("exit %d, kubectl printed\n%q\nwant\n%q", res.ExitCode, res.Stderr, want)
			}
			if e.podExists(t, ns, c.name) {
				t.Error("the refused pod was stored")
			}
		})
	}
}

// 8. A slot whose pod never starts its sidecar (no kubelet here: the pod
// stays Pending forever) frees itself once the startup timeout has passed,
// and the next pod gets it.
func scenarioStartupTimeout(t *testing.T, e *env, target *webhookTarget) {
	ns, key := "s8-startup-timeout", "slow-start"
	const startupTimeout = 3 * time.Second
	e.served(t, ns, target, nil)
	ann := gated(optIn(8080), key, 1, startupTimeout.String())

	before := time.Now()
	e.mustKctl(t, manifest(t, pod("never-starts", ann)), "create", "-n", ns, "-f", "-")
	holder := e.getPod(t, ns, "never-starts").Annotations[admission.AnnotationHolder]
	if st := e.inspect(t, ns, key, 1); st.Slots[0].Holder != holder || holder == "" {
		t.Fatalf("slot 0 is held by %q, want never-starts' %q", st.Slots[0].Holder, holder)
	}
	res := e.kctl(t, manifest(t, pod("next", ann)), "create", "-n", ns, "-f", "-")
	if want := deniedFull(ns, key, 1, 1, "never-starts"); res.OK() || !want.MatchString(res.Stderr) {
		t.Fatalf("next: exit %d, kubectl printed\n%q\nwant\n%q", res.ExitCode, res.Stderr, want)
	}
	eventually(t, startupTimeout+stepTimeout, 50*time.Millisecond, "the startup lease expires", func() error {
		if st := e.inspect(t, ns, key, 1); st.Held() != 0 {
			return fmt.Errorf("slot 0 is still held by %q", st.Slots[0].Holder)
		}
		return nil
	})
	if freed := time.Since(before); freed < startupTimeout {
		t.Errorf("the slot was free after %s, before the startup timeout of %s", freed, startupTimeout)
	}
	res = e.mustKctl(t, manifest(t, pod("next", ann)), "create", "-n", ns, "-f", "-")
	if res.Stdout != "pod/next created\n" {
		t.Errorf("kubectl printed %q", res.Stdout)
	}
}

// 10. Redis has no quorum (2 of 3 nodes down): a pod that names a semaphore
// is refused with a message that names the failed nodes, a pod that only
// wants the sidecar is still injected, and once the nodes are back the
// refused pod is created. The scenario has Redis nodes and a webhook of its
// own, so that the others keep their quorum.
func scenarioNoQuorum(t *testing.T, e *env, _ *webhookTarget) {
	redis, err := redistest.Start(redistest.Options{Nodes: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = redis.Close() })
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password})
	target := e.installTarget(t, "noquorum", nil, wh)
	ns, key := "s10-no-quorum", "k"
	e.served(t, ns, target, nil)

	for _, n := range redis.Nodes[1:] {
		n.Kill()
	}
	ann := gated(optIn(8080), key, 1, "")
	res := e.kctl(t, manifest(t, pod("gated", ann)), "create", "-n", ns, "-f", "-")
	prefix := denied("ServiceUnavailable", fmt.Sprintf("no slot of semaphore %q could be taken: no Redis quorum for acquire: 2 of 3 nodes failed and 2 must answer (", ns+"/"+key))
	prefix = strings.TrimSuffix(prefix, "\n")
	suffix := "); the pod will be created when Redis recovers\n"
	if res.OK() || !strings.HasPrefix(res.Stderr, prefix) || !strings.HasSuffix(res.Stderr, suffix) {
		t.Fatalf("exit %d, kubectl printed\n%q\nwant\n%q...%q", res.ExitCode, res.Stderr, prefix, suffix)
	}
	for _, n := range redis.Nodes[1:] {
		if !strings.Contains(res.Stderr, n.Addr()+": ") {
			t.Errorf("the message does not name the failed node %s", n.Addr())
		}
	}
	t.Logf("kubectl printed %s", strings.TrimSpace(res.Stderr))

	res = e.mustKctl(t, manifest(t, pod("sidecar-only", optIn(8080))), "create", "-n", ns, "-f", "-")
	if res.Stdout != "pod/sidecar-only created\n" {
		t.Errorf("kubectl printed %q", res.Stdout)
	}
	if container(e.getPod(t, ns, "sidecar-only"), admission.ContainerName) == nil {
		t.Error("a pod without a semaphore was not injected while Redis had no quorum")
	}

	for _, n := range redis.Nodes[1:] {
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
	}
	// The webhook's pools reconnect on their own; the API server's retry
	// here plays the ReplicaSet's.
	eventually(t, stepTimeout, 200*time.Millisecond, "the pod is created once Redis recovers", func() error {
		res := e.kctl(t, manifest(t, pod("gated", ann)), "create", "-n", ns, "-f", "-")
		if !res.OK() {
			return res.Err()
		}
		return nil
	})
}

// podToken writes a token bound to p for the audience of its injected token
// volume, as the kubelet would, and returns the file's path.
func (e *env) podToken(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	var audience string
	for _, v := range p.Spec.Volumes {
		if v.Name == admission.TokenVolumeName && v.Projected != nil && len(v.Projected.Sources) == 1 && v.Projected.Sources[0].ServiceAccountToken != nil {
			audience = v.Projected.Sources[0].ServiceAccountToken.Audience
		}
	}
	if audience == "" {
		t.Fatalf("%s has no projected token volume %s", p.Name, admission.TokenVolumeName)
	}
	res := e.mustKctl(t, "", "create", "token", "default", "-n", p.Namespace, "--audience="+audience, "--duration=10m",
		"--bound-object-kind=Pod", "--bound-object-name="+p.Name, "--bound-object-uid="+string(p.UID))
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(strings.TrimSpace(res.Stdout)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
