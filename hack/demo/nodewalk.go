package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
)

const (
	// nodeWaitTimeout bounds each wait of the node's walkthrough: pods
	// pulling images and starting on a busy 2-core machine.
	nodeWaitTimeout = 5 * time.Minute
	// sidecarPort is where the injected sidecar serves the app's metrics.
	sidecarPort = 65532
	// workersKey, workersSize and workersReplicas are the Deployment the
	// walkthrough gates.
	workersKey      = "workers"
	workersSize     = 2
	workersReplicas = 4
)

// nodeWalk is the walkthrough on the node: the walker's narration and
// kubectl, and what it learned about the workers on the way.
type nodeWalk struct {
	*walker
	running []corev1.Pod // the workers Running after the Deployment scene
	logLen  int          // lines of the first worker's sidecar log shown so far
}

func nodeWalkthrough(ctx context.Context, cfg config, st *state, out io.Writer) error {
	base, err := newWalker(ctx, cfg, st, out)
	if err != nil {
		return err
	}
	w := &nodeWalk{walker: base}
	for _, step := range []func() error{
		w.environment, func() error { return w.namespace(nil) }, w.deployment, w.sidecarLogs, w.termination, w.badAnnotation,
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

func (w *nodeWalk) environment() error {
	w.section("The environment: the chart on a real node")
	var netpol string
	switch {
	case w.st.NetworkPoliciesUnenforced != "":
		netpol = "no NetworkPolicy enforcer (this kernel lacks what kube-network-policies and kube-router need, so the chart's NetworkPolicies are stored but not enforced)"
	case w.st.NetworkPolicyEnforcer == kubenode.EnforcerKubeRouter:
		netpol = "kube-router's firewall alone enforcing NetworkPolicies with iptables and ipset (this kernel lacks the nftables queue expression kube-network-policies needs)"
	default:
		netpol = "kube-network-policies enforcing NetworkPolicies"
	}
	w.say("What runs for real on this machine: etcd, kube-apiserver, kube-controller-manager and kube-scheduler; a kubelet "+
		"(node %s at %s) on containerd and runc, with a CNI bridge for the pods; kube-proxy routing Services through iptables; "+
		"CoreDNS in kube-system; %s.", kubenode.NodeName, w.st.NodeIP, netpol)
	w.say("The chart's images were built from this checkout without Docker and pushed to an OCI registry on %s. containerd pulls "+
		"ghcr.io, docker.io and registry.k8s.io through it (a registry mirror, as air-gapped clusters run), so the chart's image "+
		"values are unchanged. The chart itself was pushed there too and installed from it:", w.st.Registry)
	fmt.Fprintf(w.out, "$ %s\n\n", w.st.HelmInstall)
	w.say("What is not as in a cluster: cert-manager does not run, so the webhook's serving certificate comes from a throw-away " +
		"CA the demo made, given to the chart as tls.existingSecret (and its CA as tls.caBundle). Nothing provisions volumes, so " +
		"the Redis pods' claims bind to local PersistentVolumes of the node's default StorageClass that the demo made ahead, " +
		"in a directory on this machine, as an administrator would. The chart's values are otherwise its defaults. The Redis image is Debian's redis-server 7.0 under the " +
		"chart's 7.4 tag. No Prometheus runs: the demo scrapes the pods itself, from the node, as a Prometheus would.")
	if _, err := w.kubectl("get", "nodes", "-o", "wide"); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.st.ReleaseNamespace, "get", "deployments,statefulsets,pods,persistentvolumeclaims", "-o", "wide"); err != nil {
		return err
	}
	if _, err := w.kubectl("get", "mutatingwebhookconfigurations", "-o",
		`jsonpath={range .items[*]}{.metadata.name}: service {.webhooks[0].clientConfig.service.namespace}/{.webhooks[0].clientConfig.service.name}:{.webhooks[0].clientConfig.service.port}{"\n"}{end}`); err != nil {
		return err
	}
	w.say("The webhook's 2 replicas and the 3 Redis servers run as pods; the API server calls the webhook through its Service, " +
		"and the webhook takes semaphore slots on a Redlock quorum of the Redis pods, by their StatefulSet names.")
	return nil
}

func (w *nodeWalk) deployment() error {
	w.section(fmt.Sprintf("A Deployment of %d replicas on a semaphore of size %d", workersReplicas, workersSize))
	path, err := w.manifest("workers.yaml", deploymentYAML("workers", workersReplicas, [][2]string{
		{admission.AnnotationOptIn, "true"},
		{admission.AnnotationSemaphoreKey, workersKey},
		{admission.AnnotationSemaphoreSize, strconv.Itoa(workersSize)},
		{admission.AnnotationScrapeInterval, "5s"},
		{admission.AnnotationPort, strconv.Itoa(images.MetricsAppPort)},
	}, appPodSpec))
	if err != nil {
		return err
	}
	if err := w.cat(path); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "apply", "-f", path); err != nil {
		return err
	}
	if err := w.until(fmt.Sprintf("%d workers Running and the ReplicaSet's denial", workersSize), func() error {
		running, err := w.workers()
		if err != nil {
			return err
		}
		if len(running) > workersSize {
			return fmt.Errorf("%w: %d workers run on a semaphore of size %d", errGiveUp, len(running), workersSize)
		}
		if len(running) < workersSize {
			return fmt.Errorf("%d of %d workers Running", len(running), workersSize)
		}
		w.running = running
		return w.denied()
	}); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "get", "pods", "-l", "app=workers", "-o", "wide"); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "get", "events", "--field-selector", "reason=FailedCreate"); err != nil {
		return err
	}
	w.say("%d pods run: each was admitted with a slot of semaphore %q, and its sidecar's startup probe opened the start gate. "+
		"The ReplicaSet's other creations were denied with the webhook's message above; it keeps retrying with backoff, and "+
		"creates the next pod once a slot frees up.", workersSize, w.ns+"/"+workersKey)
	if res, err := w.quiet("-n", w.ns, "get", "events", "--field-selector", "reason=FailedCreate", "-o", "jsonpath={.items[*].message}"); err == nil &&
		strings.Contains(res.Stdout, "no Redis quorum") {
		w.say("A denial for no Redis quorum right after the install came from Redis pods still starting. The ReplicaSet " +
			"retried, as it does for a full semaphore.")
	}
	return nil
}

func (w *nodeWalk) sidecarLogs() error {
	pod := w.running[0]
	w.section("The injected sidecar, running in " + pod.Name)
	if _, err := w.kubectl("-n", w.ns, "get", "pod", pod.Name, "-o",
		`jsonpath={range .spec.initContainers[*]}{.name} (init container, restartPolicy {.restartPolicy}){"\n"}{end}{range .spec.containers[*]}{.name}{"\n"}{end}`); err != nil {
		return err
	}
	if err := w.until("a renewal in the sidecar's log", func() error {
		lines, err := w.sidecarLog(pod.Name)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "Renewed the semaphore lease.") }) {
			return errors.New("no renewal logged yet")
		}
		return nil
	}); err != nil {
		return err
	}
	res, err := w.kubectl("-n", w.ns, "logs", pod.Name, "-c", admission.ContainerName)
	if err != nil {
		return err
	}
	w.logLen = len(logLines(res.Stdout))
	w.say("These are the sidecar's own log lines, from the container's log on the node: it took the pod's slot, opened the start " +
		"gate and renews the lease through the webhook's lease API (only the webhook talks to Redis).")
	// The app starts after the sidecar's start gate opened; until it
	// serves, the sidecar answers 502.
	var body string
	if err := w.until("the app answering through "+pod.Name+"'s sidecar", func() error {
		var err error
		body, err = get(w.metricsURL(pod))
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(w.out, "$ curl %s   # what Prometheus scrapes: the app's metrics through the sidecar\n%s", w.metricsURL(pod), indent(body))
	w.gap = true
	return nil
}

func (w *nodeWalk) termination() error {
	pod := w.running[0]
	w.section("Deleting " + pod.Name + ": the final scrape, then the slot goes back")
	w.say("kubectl delete makes the kubelet stop the pod for real: the app's preStop hook tells the sidecar, the app gets SIGTERM " +
		"and drains for 5 s, and once it has exited the kubelet sends SIGTERM to the sidecar. The sidecar keeps serving the app's " +
		"last state until its scrapers have taken it, then releases the slot as its very last act. The demo goes on scraping the " +
		"pod every second meanwhile, as a Prometheus would.")
	// The log is followed from before the delete: the kubelet removes the
	// pod moments after the sidecar exits, and a poll would miss its last
	// lines.
	follow := w.followSidecarLog(pod.Name)
	if _, err := w.kubectl("-n", w.ns, "delete", "pod", pod.Name, "--wait=false"); err != nil {
		return err
	}
	var final string
	var logged followed
	if err := w.until("the sidecar of "+pod.Name+" exiting", func() error {
		if body, err := get(w.metricsURL(pod)); err == nil {
			final = body
		}
		select {
		case logged = <-follow:
			if logged.err != nil {
				return fmt.Errorf("%w: following the sidecar's log: %w", errGiveUp, logged.err)
			}
			return nil
		default:
			return errors.New("the sidecar has not exited yet")
		}
	}); err != nil {
		return err
	}
	if !slices.ContainsFunc(logged.lines, func(l string) bool { return strings.Contains(l, "Exiting.") }) {
		return fmt.Errorf("the log of %s's sidecar ended without its exit:\n%s", pod.Name, strings.Join(logged.lines, "\n"))
	}
	fmt.Fprintf(w.out, "$ kubectl -n %s logs -f %s -c %s   # followed from before the delete; the lines after those shown above\n", w.ns, pod.Name, admission.ContainerName)
	for _, l := range logged.lines[min(w.logLen, len(logged.lines)):] {
		fmt.Fprintln(w.out, l)
	}
	fmt.Fprintf(w.out, "$ curl %s   # the last scrape answered: the app's state fetched as it exited\n%s", w.metricsURL(pod), indent(final))
	w.gap = true
	var next []corev1.Pod
	if err := w.until("the next worker Running", func() error {
		running, err := w.workers()
		if err != nil {
			return err
		}
		if len(running) > workersSize {
			return fmt.Errorf("%w: %d workers run on a semaphore of size %d", errGiveUp, len(running), workersSize)
		}
		for _, p := range running {
			if !slices.ContainsFunc(w.running, func(q corev1.Pod) bool { return q.Name == p.Name }) {
				next = append(next, p)
			}
		}
		if len(next) == 0 {
			return errors.New("no new worker Running yet")
		}
		return nil
	}); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", w.ns, "get", "pods", "-l", "app=workers", "-o",
		`custom-columns=NAME:.metadata.name,STATUS:.status.phase,SLOT:.metadata.annotations.prometheus-metrics-proxy-hook\.kaidotio\.github\.io/semaphore-slot`); err != nil {
		return err
	}
	w.say("The slot %s held went back when its sidecar exited, and the ReplicaSet's next retry was admitted: %s runs now, "+
		"and at no time did more than %d workers run.", pod.Name, next[0].Name, workersSize)
	return nil
}

func (w *nodeWalk) badAnnotation() error {
	w.section("A bad annotation is refused with a message that says why")
	path, err := w.manifest("bad.yaml", podYAML("bad", [][2]string{
		{admission.AnnotationOptIn, "true"},
		{admission.AnnotationPort, strconv.Itoa(images.MetricsAppPort)},
		{admission.AnnotationSemaphoreKey, workersKey},
		{admission.AnnotationSemaphoreSize, "0"},
	}))
	if err != nil {
		return err
	}
	_, err = w.kubectl("-n", w.ns, "create", "-f", path)
	return err
}

// workers lists the workers' pods that are Running with a container
// running, sorted by name.
func (w *nodeWalk) workers() ([]corev1.Pod, error) {
	res, err := w.quiet("-n", w.ns, "get", "pods", "-l", "app=workers", "-o", "json")
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		return nil, err
	}
	var list corev1.PodList
	if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
		return nil, fmt.Errorf("decoding the pod list: %w", err)
	}
	var running []corev1.Pod
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			running = append(running, p)
		}
	}
	slices.SortFunc(running, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return running, nil
}

// denied succeeds once the ReplicaSet's events carry the full semaphore's
// denial.
func (w *nodeWalk) denied() error {
	res, err := w.quiet("-n", w.ns, "get", "events", "--field-selector", "reason=FailedCreate", "-o", "jsonpath={.items[*].message}")
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		return err
	}
	if !strings.Contains(res.Stdout, fmt.Sprintf("semaphore %q is full", w.ns+"/"+workersKey)) {
		return errors.New("no denial event yet")
	}
	return nil
}

func (w *nodeWalk) sidecarLog(pod string) ([]string, error) {
	res, err := w.quiet("-n", w.ns, "logs", pod, "-c", admission.ContainerName)
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		return nil, err
	}
	return logLines(res.Stdout), nil
}

// followed is what `kubectl logs -f` printed until the container exited.
type followed struct {
	lines []string
	err   error
}

// followSidecarLog follows the sidecar's log of pod until the container
// exits; the channel gets what it printed.
func (w *nodeWalk) followSidecarLog(pod string) <-chan followed {
	ch := make(chan followed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(w.ctx, nodeWaitTimeout)
		defer cancel()
		res, err := w.k.Run(ctx, "", "-n", w.ns, "logs", "-f", pod, "-c", admission.ContainerName)
		if err == nil {
			err = res.Err()
		}
		ch <- followed{lines: logLines(res.Stdout), err: err}
	}()
	return ch
}

func (w *nodeWalk) metricsURL(pod corev1.Pod) string {
	return fmt.Sprintf("http://%s:%d/metrics", pod.Status.PodIP, sidecarPort)
}

func logLines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
