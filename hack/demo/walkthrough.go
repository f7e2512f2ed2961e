package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/kubectl"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// errGiveUp, wrapped in the error of a wait's check, ends the wait: what
// it saw can no longer turn into what it waits for.
var errGiveUp = errors.New("giving up")

// waitTimeout bounds each wait of the walkthrough (a ServiceAccount, an
// event, a renewal) on a busy machine.
const waitTimeout = 90 * time.Second

// walker narrates one walkthrough and runs its commands.
type walker struct {
	ctx  context.Context
	out  io.Writer
	k    *kubectl.Runner
	st   *state
	ns   string
	dir  string // this walkthrough's manifests
	logs string // this walkthrough's sidecar logs
	// gap is set after command output, so that narration that follows it
	// starts after a blank line.
	gap bool
	// onNode waits longer and polls less often: pods pull and start.
	onNode bool
}

// newWalker starts the next walkthrough: its namespace, manifests and
// sidecar logs are numbered.
func newWalker(ctx context.Context, cfg config, st *state, out io.Writer) (*walker, error) {
	k, err := kubectl.New(st.Kubeconfig)
	if err != nil {
		return nil, err
	}
	n, err := cfg.dir.nextRun()
	if err != nil {
		return nil, err
	}
	w := &walker{
		ctx: ctx, out: out, k: k, st: st, onNode: st.Mode == modeNode,
		ns:   "demo-" + strconv.Itoa(n),
		dir:  cfg.dir.path("manifests", strconv.Itoa(n)),
		logs: cfg.dir.path("sidecars", strconv.Itoa(n)),
	}
	for _, d := range []string{w.dir, w.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func walkthrough(ctx context.Context, cfg config, st *state, out io.Writer) error {
	w, err := newWalker(ctx, cfg, st, out)
	if err != nil {
		return err
	}
	app, err := startApp()
	if err != nil {
		return err
	}
	defer app.close()

	for _, step := range []func(*metricsApp) error{
		w.environment, w.namespace, w.untouched, w.injected, w.semaphore, w.sidecar, w.dryRun, w.badAnnotation, w.deployment,
	} {
		if err := step(app); err != nil {
			return err
		}
	}
	return nil
}

// --- the steps ---------------------------------------------------------

func (w *walker) environment(*metricsApp) error {
	w.section("The environment")
	w.say("kube-apiserver runs at %s with etcd and kube-controller-manager, but no kubelet: pods are admitted and stored, never run. "+
		"The webhook runs as a local process at %s, backed by 3 Redis nodes (%s; it waits up to %s for each, not the default 50 ms, "+
		"since a workstation's disk may be busy). The chart is installed as release %q in %s, "+
		"and its MutatingWebhookConfiguration now calls the local webhook by URL instead of the chart's Service.",
		w.st.APIServer, w.st.WebhookURL, strings.Join(w.st.RedisAddrs, ", "), demoRedisTimeout, w.st.Release, w.st.ReleaseNamespace)
	if _, err := w.kubectl("get", "mutatingwebhookconfiguration", w.st.WebhookConfig,
		"-o", `jsonpath={.webhooks[0].clientConfig.url}{"\n"}failurePolicy={.webhooks[0].failurePolicy} sideEffects={.webhooks[0].sideEffects}{"\n"}{.webhooks[0].matchConditions[0].expression}{"\n"}`); err != nil {
		return err
	}
	w.say("Only pods with the opt-in annotation reach the webhook (the matchConditions expression above), so an outage of the webhook cannot block anyone else. " +
		"The rest of the release was accepted by the API server as it would be in a cluster (cert-manager's resources by their real CRDs), " +
		"but nothing runs it here: no kubelet starts the pods, no cert-manager issues the certificates.")
	_, err := w.kubectl("-n", w.st.ReleaseNamespace, "get", "deployments,statefulsets,certificates.cert-manager.io")
	return err
}

func (w *walker) namespace(*metricsApp) error {
	w.section("A namespace that enforces the restricted Pod Security Standard")
	if _, err := w.kubectl("create", "namespace", w.ns); err != nil {
		return err
	}
	if _, err := w.kubectl("label", "namespace", w.ns, "pod-security.kubernetes.io/enforce=restricted"); err != nil {
		return err
	}
	// kube-controller-manager creates the namespace's default
	// ServiceAccount a moment later; pods are refused until it exists.
	return w.until("the default ServiceAccount of "+w.ns, func() error {
		res, err := w.quiet("-n", w.ns, "get", "serviceaccount", "default")
		if err != nil {
			return err
		}
		return res.Err()
	})
}

func (w *walker) untouched(*metricsApp) error {
	w.section("A pod that did not opt in is left alone")
	path, err := w.manifest("plain.yaml", podYAML("plain", nil))
	if err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "create", "-f", path); err != nil {
		return err
	}
	_, err = w.kubectl("-n", w.ns, "get", "pod", "plain", "-o", `jsonpath={.spec.containers[*].name}{"\n"}`)
	return err
}

func (w *walker) injected(app *metricsApp) error {
	w.section("An opted-in pod gets the metrics-proxy sidecar")
	path, err := w.manifest("web.yaml", podYAML("web", [][2]string{
		{admission.AnnotationOptIn, "true"},
		{admission.AnnotationPort, strconv.Itoa(app.port)},
	}))
	if err != nil {
		return err
	}
	if err := w.cat(path); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "create", "-f", path); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "get", "pod", "web", "-o",
		`jsonpath={range .spec.initContainers[*]}{.name} {.ports[*].containerPort} (init, restartPolicy {.restartPolicy}){"\n"}{end}{range .spec.containers[*]}{.name} {.ports[*].containerPort}{"\n"}{end}`); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "get", "pod", "web", "-o",
		`jsonpath={.metadata.annotations}{"\n"}terminationGracePeriodSeconds={.spec.terminationGracePeriodSeconds}{"\n"}`); err != nil {
		return err
	}
	w.say("The sidecar %q is a native sidecar (an init container with restartPolicy Always: the kubelet starts the app after its startup probe "+
		"passed and stops it after the app exited). It listens on 65532, prometheus.io/port now points at it (annotation-based scrape configs go "+
		"through it), the grace period grew by the scrape interval plus 10 s for the final scrape after the app's exit, and PodSecurity "+
		"(restricted) accepted the result.", admission.ContainerName)
	return nil
}

func (w *walker) workerYAML(name string, app *metricsApp, key string, size int) string {
	return podYAML(name, [][2]string{
		{admission.AnnotationOptIn, "true"},
		{admission.AnnotationPort, strconv.Itoa(app.port)},
		{admission.AnnotationSemaphoreKey, key},
		{admission.AnnotationSemaphoreSize, strconv.Itoa(size)},
	})
}

func (w *walker) semaphore(app *metricsApp) error {
	w.section("A semaphore of size 2: the third pod is refused")
	w.say("Pods that name semaphore %q with size 2 share 2 slots in namespace %s; each slot is a Redlock mutex on a quorum of the 3 Redis nodes.", "workers", w.ns)
	var paths []string
	for i := 1; i <= 3; i++ {
		path, err := w.manifest(fmt.Sprintf("worker-%d.yaml", i), w.workerYAML(fmt.Sprintf("worker-%d", i), app, "workers", 2))
		if err != nil {
			return err
		}
		paths = append(paths, path)
	}
	if err := w.cat(paths[0]); err != nil {
		return err
	}
	for _, p := range paths[:2] {
		if _, err := w.kubectl("-n", w.ns, "create", "-f", p); err != nil {
			return err
		}
	}
	res, err := w.kubectl("-n", w.ns, "create", "-f", paths[2])
	if err != nil {
		return err
	}
	if res.OK() {
		return errors.New("worker-3 was created although both slots were held")
	}
	w.say("The API server refused worker-3 with the webhook's message (HTTP 429). A controller (ReplicaSet, Job, StatefulSet) retries on its own; a bare pod has to be created again.")
	return nil
}

func (w *walker) sidecar(app *metricsApp) error {
	w.section("worker-1's sidecar keeps its slot, then gives it back on SIGTERM")
	w.say("On a node the kubelet would now start worker-1's injected container. Here the demo runs the same binary with exactly the arguments and "+
		"environment the webhook injected into worker-1, read back from the API server, except the listen address (127.0.0.1:0 instead of :65532, "+
		"which may be taken on this machine). Its upstream is a small app the demo serves on 127.0.0.1:%d.", app.port)
	res, err := w.quiet("-n", w.ns, "get", "pod", "worker-1", "-o", "json")
	if err != nil {
		return err
	}
	if err := res.Err(); err != nil {
		return err
	}
	var pod corev1.Pod
	if err := json.Unmarshal([]byte(res.Stdout), &pod); err != nil {
		return fmt.Errorf("cannot decode worker-1: %w", err)
	}
	var c *corev1.Container
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if list[i].Name == admission.ContainerName {
				c = &list[i]
			}
		}
	}
	if c == nil || !slices.Equal(c.Command, []string{admission.SidecarCommand}) {
		return fmt.Errorf("worker-1 has no injected sidecar with command [%s]", admission.SidecarCommand)
	}
	env := withoutPMPH(os.Environ())
	var shown []string
	for _, v := range c.Env {
		value := v.Value
		switch v.Name {
		case "PMPH_LISTEN_ADDRESS":
			value = "127.0.0.1:0"
		case "PMPH_LEASE_TOKEN_FILE":
			if value, err = w.podToken(&pod); err != nil {
				return err
			}
		}
		env = append(env, v.Name+"="+value)
		display := value
		if strings.Contains(display, "\n") {
			display = strings.SplitN(display, "\n", 2)[0] + "...(PEM)"
		}
		shown = append(shown, fmt.Sprintf("    %s=%s", v.Name, display))
	}
	fmt.Fprintf(w.out, "$ %s   # with this environment:\n%s\n", strings.Join(append([]string{filepath.Base(w.st.SidecarBinary)}, c.Args...), " "), strings.Join(shown, "\n"))
	sc, err := startChild("sidecar", filepath.Join(w.logs, "worker-1-sidecar.log"), env, w.st.SidecarBinary, c.Args...)
	if err != nil {
		return err
	}
	defer func() { _ = sc.stop(5 * time.Second) }()

	var addr string
	if err := w.until("the sidecar serving", func() error {
		if !sc.running() {
			return fmt.Errorf("the sidecar exited: %s", sc.logTail(10))
		}
		for _, ev := range events(sc) {
			if ev.Message == "The sidecar is serving." {
				addr = ev.ListenAddress
				return nil
			}
		}
		return errors.New("not serving yet")
	}); err != nil {
		return err
	}
	if err := w.until("two renewals", func() error {
		n, err := renewals(addr)
		if err != nil {
			return err
		}
		if n < 2 {
			return fmt.Errorf("%v renewals so far", n)
		}
		return nil
	}); err != nil {
		return err
	}
	w.showEvents(sc, 0)
	n, _ := renewals(addr)
	w.say("It renewed the lease %v times so far (every third of the webhook's lease TTL of %s), through the webhook's lease API; only the webhook talks to Redis.", n, demoLeaseTTL)

	body, err := get("http://" + addr + "/metrics")
	if err != nil {
		return err
	}
	fmt.Fprintf(w.out, "$ curl http://%s/metrics   # what Prometheus scrapes, proxied to the app\n%s", addr, indent(body))
	seen := len(events(sc))
	// What the kubelet does with a native sidecar: the app container's
	// preStop hook (injected by the webhook), the app's own stop, and the
	// sidecar's signal only once the app has exited.
	fmt.Fprintf(w.out, "$ curl http://%s%s   # the pod is deleted: the app's preStop hook\n", addr, admission.TerminatingPath)
	fetchedBefore := app.jobs.Load()
	if _, err := get("http://" + addr + admission.TerminatingPath); err != nil {
		return err
	}
	// The app drains: the sidecar fetches its metrics while it does, and
	// keeps the last answer for the final scrape.
	if err := w.until("the sidecar fetching the draining app", func() error {
		if app.jobs.Load() == fetchedBefore {
			return errors.New("no fetch since the preStop hook")
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(w.out, "# the app drains, the sidecar fetches its metrics meanwhile, the app exits; then:\n$ kill -TERM %d\n", sc.pid())
	// The demo scrapes as a Prometheus would, until the sidecar exits: a
	// single fetch after the signal would race the sidecar's exit.
	scr := startScraping("http://"+addr+"/metrics", 100*time.Millisecond)
	app.close()
	if err := sc.signal(syscall.SIGTERM); err != nil {
		scr.stop()
		return err
	}
	err = sc.wait(waitTimeout)
	last := scr.stop()
	if err != nil {
		return fmt.Errorf("the sidecar did not exit cleanly: %w; log:\n%s", err, sc.logTail(20))
	}
	if last == "" {
		return fmt.Errorf("no scrape of the terminating sidecar was answered; its log:\n%s", sc.logTail(20))
	}
	fmt.Fprintf(w.out, "# the demo scraped http://%s/metrics every 100 ms meanwhile, as Prometheus would; the last answer, the app's state fetched just before it exited:\n%s", addr, indent(last))
	w.showEvents(sc, seen)
	w.say("The slot is free again, so worker-3 is admitted now:")
	if _, err := w.kubectl("-n", w.ns, "create", "-f", rel(filepath.Join(w.dir, "worker-3.yaml"))); err != nil {
		return err
	}
	_, err = w.kubectl("-n", w.ns, "get", "pods", "worker-1", "worker-2", "worker-3", "-o",
		`custom-columns=NAME:.metadata.name,SLOT:.metadata.annotations.prometheus-metrics-proxy-hook\.kaidotio\.github\.io/semaphore-slot,HOLDER:.metadata.annotations.prometheus-metrics-proxy-hook\.kaidotio\.github\.io/semaphore-holder`)
	return err
}

func (w *walker) dryRun(app *metricsApp) error {
	w.section("A server-side dry run shows the patch and takes no slot")
	path, err := w.manifest("preview.yaml", w.workerYAML("preview", app, "preview", 1))
	if err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "create", "--dry-run=server", "-f", path, "-o",
		`jsonpath={.spec.containers[*].name}{"\n"}{.metadata.annotations}{"\n"}`); err != nil {
		return err
	}
	w.say("The only slot of semaphore %q is still free, so the real creation goes through:", "preview")
	_, err = w.kubectl("-n", w.ns, "create", "-f", path)
	return err
}

func (w *walker) badAnnotation(app *metricsApp) error {
	w.section("A bad annotation is refused with a message that says why")
	path, err := w.manifest("bad.yaml", w.workerYAML("bad", app, "workers", 0))
	if err != nil {
		return err
	}
	_, err = w.kubectl("-n", w.ns, "create", "-f", path)
	return err
}

func (w *walker) deployment(app *metricsApp) error {
	w.section("A Deployment of 3 replicas on a semaphore of size 2")
	path, err := w.manifest("batch.yaml", deploymentYAML("batch", 3, [][2]string{
		{admission.AnnotationOptIn, "true"},
		{admission.AnnotationPort, strconv.Itoa(app.port)},
		{admission.AnnotationSemaphoreKey, "batch"},
		{admission.AnnotationSemaphoreSize, "2"},
	}, restrictedPodSpec))
	if err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "create", "-f", path); err != nil {
		return err
	}
	if err := w.until("the ReplicaSet's denial", func() error {
		res, err := w.quiet("-n", w.ns, "get", "events", "--field-selector", "reason=FailedCreate", "-o", "jsonpath={.items[*].message}")
		if err != nil {
			return err
		}
		if !strings.Contains(res.Stdout, `semaphore "`+w.ns+`/batch" is full`) {
			return errors.New("no denial event yet")
		}
		return nil
	}); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "get", "pods", "-l", "app=batch"); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "get", "events", "--field-selector", "reason=FailedCreate"); err != nil {
		return err
	}
	w.say("Two pods exist (Pending: there is no kubelet) and the ReplicaSet's events carry the denial. It keeps retrying with backoff, " +
		"and creates the third pod once a slot frees up: when a pod's sidecar releases it, or when a slot's startup timeout " +
		"(semaphore-startup-timeout, 5m by default) passes without the pod's sidecar renewing it.")
	return nil
}

// --- output ----------------------------------------------------------------

func (w *walker) section(title string) {
	fmt.Fprintf(w.out, "\n━━ %s\n\n", title)
	w.gap = false
}

// say prints narration, wrapped at 100 columns.
func (w *walker) say(format string, args ...any) {
	text := fmt.Sprintf(format, args...)
	if w.gap {
		fmt.Fprintln(w.out)
	}
	w.gap = false
	line := ""
	for _, word := range strings.Fields(text) {
		if line != "" && len(line)+1+len(word) > 100 {
			fmt.Fprintln(w.out, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	fmt.Fprintln(w.out, line)
	fmt.Fprintln(w.out)
}

// kubectl prints the command as a user types it, runs it and prints what
// kubectl printed. A refusal (non-zero exit) is output like any other; the
// error is for a kubectl that could not run.
func (w *walker) kubectl(args ...string) (kubectl.Result, error) {
	fmt.Fprintf(w.out, "$ kubectl %s\n", shellJoin(args))
	w.gap = true
	ctx, cancel := context.WithTimeout(w.ctx, waitTimeout)
	defer cancel()
	res, err := w.k.Run(ctx, "", args...)
	if err != nil {
		return res, err
	}
	fmt.Fprint(w.out, res.Stderr)
	fmt.Fprint(w.out, res.Stdout)
	if res.Stdout != "" && !strings.HasSuffix(res.Stdout, "\n") {
		fmt.Fprintln(w.out)
	}
	return res, nil
}

// quiet runs kubectl without printing: for waits and reads.
// podToken writes what the kubelet would project into the sidecar: a token
// bound to the pod, for the lease API's audience, from the TokenRequest API.
func (w *walker) podToken(pod *corev1.Pod) (string, error) {
	var audience string
	for _, v := range pod.Spec.Volumes {
		if v.Name == admission.TokenVolumeName && v.Projected != nil && len(v.Projected.Sources) == 1 && v.Projected.Sources[0].ServiceAccountToken != nil {
			audience = v.Projected.Sources[0].ServiceAccountToken.Audience
		}
	}
	if audience == "" {
		return "", fmt.Errorf("%s has no projected token volume %s", pod.Name, admission.TokenVolumeName)
	}
	sa := cmp.Or(pod.Spec.ServiceAccountName, "default")
	res, err := w.quiet("-n", pod.Namespace, "create", "token", sa, "--audience="+audience, "--duration=10m",
		"--bound-object-kind=Pod", "--bound-object-name="+pod.Name, "--bound-object-uid="+string(pod.UID))
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		return "", fmt.Errorf("cannot request a token for %s: %w", pod.Name, err)
	}
	path := filepath.Join(w.logs, pod.Name+"-token")
	if err := os.WriteFile(path, []byte(strings.TrimSpace(res.Stdout)), 0o600); err != nil {
		return "", fmt.Errorf("cannot write %s: %w", path, err)
	}
	return path, nil
}

func (w *walker) quiet(args ...string) (kubectl.Result, error) {
	ctx, cancel := context.WithTimeout(w.ctx, waitTimeout)
	defer cancel()
	return w.k.Run(ctx, "", args...)
}

func (w *walker) manifest(name, content string) (string, error) {
	path := filepath.Join(w.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return "", fmt.Errorf("cannot write %s: %w", path, err)
	}
	return rel(path), nil
}

func (w *walker) cat(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(w.out, "$ cat %s\n%s", path, data)
	w.gap = true
	return nil
}

// until polls check until it succeeds, up to waitTimeout (nodeWaitTimeout
// on the node).
func (w *walker) until(what string, check func() error) error {
	timeout, every := waitTimeout, 200*time.Millisecond
	if w.onNode {
		timeout, every = nodeWaitTimeout, time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || errors.Is(err, errGiveUp) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-w.ctx.Done():
			return w.ctx.Err()
		case <-time.After(every):
		}
	}
}

// showEvents prints the sidecar's log events from index from on, as
// "sidecar: level message".
func (w *walker) showEvents(c *child, from int) {
	evs := events(c)
	for _, ev := range evs[min(from, len(evs)):] {
		fmt.Fprintf(w.out, "  sidecar log: %-5s %s\n", ev.Level, ev.Message)
	}
	w.gap = true
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

var plainArg = regexp.MustCompile(`^[A-Za-z0-9_./:=,@%+-]+$`)

// shellJoin quotes the arguments the way a user would type them in a
// POSIX shell.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if plainArg.MatchString(a) {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

// --- the sidecar's side ----------------------------------------------------

type event struct {
	Level         string `json:"level"`
	Message       string `json:"message"`
	ListenAddress string `json:"listen_address"`
}

func events(c *child) []event {
	var out []event
	for _, line := range c.logLines() {
		var ev event
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Message != "" {
			out = append(out, ev)
		}
	}
	return out
}

// renewals reads the sidecar's count of successful renewals from its own
// metrics.
func renewals(addr string) (float64, error) {
	return sidecarSample(addr, `prometheus_metrics_proxy_hook_sidecar_lease_operations_total{operation="renew",result="ok"}`)
}

// sidecarSample reads one series from the sidecar's own metrics; 0 when it
// is not there yet.
func sidecarSample(addr, series string) (float64, error) {
	body, err := get("http://" + addr + "/-/metrics")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, nil
}

// scraping fetches a URL at an interval in the background, keeping the last
// body answered.
type scraping struct {
	done chan struct{}
	last chan string
}

func startScraping(url string, every time.Duration) *scraping {
	s := &scraping{done: make(chan struct{}), last: make(chan string, 1)}
	go func() {
		var last string
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			if body, err := get(url); err == nil {
				last = body
			}
			select {
			case <-s.done:
				s.last <- last
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// stop ends the scraping and returns the last body answered ("" if none).
func (s *scraping) stop() string {
	close(s.done)
	return <-s.last
}

func get(url string) (string, error) {
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s answered %s", url, resp.Status)
	}
	return string(body), nil
}

func withoutPMPH(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PMPH_") {
			out = append(out, kv)
		}
	}
	return out
}

// metricsApp is the application the worker pods' sidecars proxy: a counter
// on 127.0.0.1, where their upstream (http://127.0.0.1:PORT/metrics) points.
type metricsApp struct {
	port int
	srv  *http.Server
	// jobs grows with every request, so that each fetch sees a new value.
	jobs *atomic.Int64
}

func startApp() (*metricsApp, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("cannot listen for the demo app: %w", err)
	}
	jobs := &atomic.Int64{}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprintf(w, "# HELP demo_jobs_done_total Jobs this app finished.\n# TYPE demo_jobs_done_total counter\ndemo_jobs_done_total %d\n", jobs.Add(1))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return &metricsApp{port: l.Addr().(*net.TCPAddr).Port, srv: srv, jobs: jobs}, nil
}

func (a *metricsApp) close() { _ = a.srv.Close() }

// toolsBin is where kubectl lives, for the user's PATH.
func toolsBin(cfg config) string {
	if dir, err := kubetest.ToolsBin(); err == nil {
		return dir
	}
	return filepath.Join(cfg.root, ".tools", "bin")
}
