package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

// reconcileWindow is the leak scenario's --reconcile-window: short, so that
// a lease without a pod is released within seconds.
const reconcileWindow = 5 * time.Second

// leakRelease is the reconciler's Lease the leak scenario's webhooks share.
const leakRelease = "pmph-leaks"

// reconcilingWebhook runs a webhook whose reconciler talks to the suite's
// API server.
func (e *env) reconcilingWebhook(t *testing.T) *webhooktest.Webhook {
	t.Helper()
	return e.startWebhook(t, "--lease-ttl="+leaseTTL.String(), "--kubeconfig="+e.cp.KubeconfigPath,
		"--reconcile-window="+reconcileWindow.String(), "--reconcile-interval=1s",
		"--leader-election-namespace=default", "--leader-election-lease-name="+leakRelease+"-reconciler")
}

// 11. Every way a pod can be refused or removed after the webhook took its
// slot leaves no slot behind: the reconciler releases it within the window,
// and the next compliant pod is admitted. A lease without a record (granted
// by the previous release) is never released. Then a replica restarted
// mid-way, and two reconcilers at once.
func scenarioLeaks(t *testing.T, e *env, _ *webhookTarget) {
	wh := e.reconcilingWebhook(t)
	target := e.installTarget(t, leakRelease, nil, wh)

	legacyNS := "l-legacy"
	e.served(t, legacyNS, target, nil)
	legacyHolder := semaphore.NewHolderID()
	legacyAt := time.Now()
	if _, err := e.sem.AcquireAs(t.Context(), legacyNS+"/old", 1, 10*time.Minute, legacyHolder); err != nil {
		t.Fatal(err)
	}

	t.Run("causes", func(t *testing.T) {
		for _, c := range leakCases() {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				ns := "l-" + c.name
				e.served(t, ns, target, c.labels)
				if c.setup != nil {
					c.setup(t, e, ns)
				}
				ann := gated(optIn(8080), "one", c.size, "10m")
				for _, name := range c.before {
					e.mustKctl(t, manifest(t, pod(name, ann)), "create", "-n", ns, "-f", "-")
				}
				res := e.kctl(t, manifest(t, pod(c.pod, ann, c.mutate...)), "create", "-n", ns, "-f", "-")
				if c.refusal != "" && (res.OK() || !strings.Contains(res.Stderr, c.refusal)) {
					t.Fatalf("the pod was not refused with %q: exit %d, %q", c.refusal, res.ExitCode, res.Stderr)
				}
				if c.then != nil {
					c.then(t, e, ns)
				}
				refused := time.Now()
				eventually(t, reconcileWindow+stepTimeout, 100*time.Millisecond, "the leaked slot is released", func() error {
					if held := e.inspect(t, ns, "one", c.size).Held(); held != len(c.before) {
						return fmt.Errorf("%d slots held, want %d", held, len(c.before))
					}
					return nil
				})
				t.Logf("%s (cause %s): slot released %s after the refusal (window %s)", c.name, c.cause, time.Since(refused).Round(100*time.Millisecond), reconcileWindow)
				if c.cleanup != nil {
					c.cleanup(t, e, ns)
				}
				// The admission plugins' caches (a deleted quota) may lag.
				eventually(t, stepTimeout, 500*time.Millisecond, "the next compliant pod is admitted", func() error {
					if res := e.kctl(t, manifest(t, pod("next", ann)), "create", "-n", ns, "-f", "-"); !res.OK() {
						return fmt.Errorf("kubectl printed %q", res.Stderr)
					}
					return nil
				})
				e.waitReleaseEvent(t, ns, c.eventOn)
			})
		}
	})

	t.Run("restarted-replica", func(t *testing.T) {
		ns := "l-restart"
		e.served(t, ns, target, restricted())
		ann := gated(optIn(8080), "one", 1, "10m")
		res := e.kctl(t, manifest(t, pod("escalates", ann, allowEscalation)), "create", "-n", ns, "-f", "-")
		if res.OK() {
			t.Fatal("the escalating pod was admitted")
		}
		refused := time.Now()
		// Killed, not stopped: it cannot give its leadership back.
		wh.Kill()
		if err := wh.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, reconcileWindow+2*stepTimeout, 100*time.Millisecond, "the restarted replica releases the slot", func() error {
			if held := e.inspect(t, ns, "one", 1).Held(); held != 0 {
				return fmt.Errorf("%d slots held", held)
			}
			return nil
		})
		t.Logf("restarted replica: slot released %s after the refusal", time.Since(refused).Round(100*time.Millisecond))
		e.mustKctl(t, manifest(t, pod("next", ann)), "create", "-n", ns, "-f", "-")
	})

	t.Run("two-reconcilers", func(t *testing.T) {
		other := e.reconcilingWebhook(t)
		before := releases(t, wh) + releases(t, other)
		ns := "l-two"
		e.served(t, ns, target, restricted())
		ann := gated(optIn(8080), "one", 1, "10m")
		if res := e.kctl(t, manifest(t, pod("escalates", ann, allowEscalation)), "create", "-n", ns, "-f", "-"); res.OK() {
			t.Fatal("the escalating pod was admitted")
		}
		eventually(t, reconcileWindow+stepTimeout, 100*time.Millisecond, "one of the two releases the slot", func() error {
			if held := e.inspect(t, ns, "one", 1).Held(); held != 0 {
				return fmt.Errorf("%d slots held", held)
			}
			return nil
		})
		// The leader sweeps three more times: still one release.
		swept := sweeps(t, wh) + sweeps(t, other)
		eventually(t, stepTimeout, 100*time.Millisecond, "three more sweeps", func() error {
			if n := sweeps(t, wh) + sweeps(t, other); n < swept+3 {
				return fmt.Errorf("%v sweeps since the release", n-swept)
			}
			return nil
		})
		if got := releases(t, wh) + releases(t, other) - before; got != 1 {
			t.Fatalf("%v releases counted by the two replicas for one leaked slot, want exactly 1", got)
		}
		if leaders := gauge(t, wh, "prometheus_metrics_proxy_hook_reconciler_leader") + gauge(t, other, "prometheus_metrics_proxy_hook_reconciler_leader"); leaders != 1 {
			t.Fatalf("%v replicas lead, want exactly 1", leaders)
		}
	})

	t.Run("previous-release-lease-kept", func(t *testing.T) {
		if held := time.Since(legacyAt); held < 2*reconcileWindow {
			t.Fatalf("only %s passed; the check needs more than two windows", held)
		}
		if st := e.inspect(t, legacyNS, "old", 1); st.Slots[0].Holder != legacyHolder {
			t.Fatalf("the lease without a record was released (slot 0 held by %q)", st.Slots[0].Holder)
		}
	})
}

func allowEscalation(p *corev1.Pod) {
	yes := true
	p.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = &yes
}

type leakCase struct {
	name, cause string
	size        int
	labels      map[string]string
	// before are pods created first, which keep their slots.
	before []string
	pod    string
	mutate []func(*corev1.Pod)
	// refusal is part of kubectl's error for the pod; empty when it is
	// created.
	refusal string
	setup   func(t *testing.T, e *env, ns string)
	then    func(t *testing.T, e *env, ns string)
	cleanup func(t *testing.T, e *env, ns string)
	// eventOn is the kind/name the release's Event is about.
	eventOn string
}

func leakCases() []leakCase {
	return []leakCase{
		{
			name: "podsecurity", cause: "no_pod", size: 1, labels: restricted(),
			pod: "escalates", mutate: []func(*corev1.Pod){allowEscalation},
			refusal: `violates PodSecurity "restricted:latest"`, eventOn: "Pod/escalates",
		},
		{
			name: "quota", cause: "no_pod", size: 1, pod: "over-quota", refusal: "forbidden",
			setup: func(t *testing.T, e *env, ns string) {
				e.mustKctl(t, "", "create", "quota", "no-pods", "--hard=pods=0", "-n", ns)
			},
			cleanup: func(t *testing.T, e *env, ns string) {
				e.mustKctl(t, "", "delete", "quota", "no-pods", "-n", ns)
			},
			eventOn: "Pod/over-quota",
		},
		{
			name: "policy", cause: "no_pod", size: 1, pod: "denied-by-policy",
			mutate:  []func(*corev1.Pod){func(p *corev1.Pod) { p.Labels = map[string]string{"deny": "true"} }},
			refusal: "pods labelled deny are refused", eventOn: "Pod/denied-by-policy",
			setup: func(t *testing.T, e *env, ns string) { e.denyPolicy(t, ns) },
		},
		{
			name: "already-exists", cause: "no_pod", size: 2, before: []string{"fixed"}, pod: "fixed",
			refusal: `pods "fixed" already exists`, eventOn: "Pod/fixed",
		},
		{
			name: "deleted-pending", cause: "pod_deleted", size: 1, pod: "pending",
			then: func(t *testing.T, e *env, ns string) {
				e.mustKctl(t, "", "delete", "pod", "pending", "-n", ns, "--wait=false")
			},
			eventOn: "Pod/pending",
		},
	}
}

// denyPolicy installs a ValidatingAdmissionPolicy that refuses pods
// labelled deny in ns, and waits until the API server enforces it.
func (e *env) denyPolicy(t *testing.T, ns string) {
	t.Helper()
	name := "deny-labelled-" + ns
	policy := fmt.Sprintf(`apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: %[1]s}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  validations:
  - expression: "!has(object.metadata.labels) || !('deny' in object.metadata.labels)"
    message: pods labelled deny are refused by policy
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: %[1]s}
spec:
  policyName: %[1]s
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: %[2]s}
`, name, ns)
	e.mustKctl(t, policy, "apply", "-f", "-")
	t.Cleanup(func() {
		// The test's context has ended by now.
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		defer cancel()
		if _, err := e.kubectl.Run(ctx, "", "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, "--ignore-not-found"); err != nil {
			t.Errorf("removing the policy: %v", err)
		}
	})
	// A pod that does not opt in probes the policy without taking a slot.
	probe := pod("probe", nil, func(p *corev1.Pod) { p.Labels = map[string]string{"deny": "true"} })
	eventually(t, stepTimeout, 200*time.Millisecond, "the policy is enforced", func() error {
		res := e.kctl(t, manifest(t, probe), "create", "-n", ns, "-f", "-", "--dry-run=server")
		if res.OK() {
			return fmt.Errorf("a labelled pod is still admitted")
		}
		return nil
	})
}

// waitReleaseEvent waits for the reconciler's Event about kindName
// ("Pod/name") in ns.
func (e *env) waitReleaseEvent(t *testing.T, ns, kindName string) {
	t.Helper()
	kind, name, _ := strings.Cut(kindName, "/")
	eventually(t, stepTimeout, 200*time.Millisecond, "the release's Event on "+kindName, func() error {
		res := e.mustKctl(t, "", "get", "events", "-n", ns, "--field-selector", "reason=SemaphoreSlotReleased", "-o", "json")
		var list corev1.EventList
		if err := json.Unmarshal([]byte(res.Stdout), &list); err != nil {
			return err
		}
		for _, ev := range list.Items {
			if ev.InvolvedObject.Kind == kind && ev.InvolvedObject.Name == name && strings.Contains(ev.Message, "was released") {
				return nil
			}
		}
		return fmt.Errorf("%d release events, none about %s", len(list.Items), kindName)
	})
}

// releases sums the webhook's reconciler_releases_total over its causes.
func releases(t *testing.T, wh *webhooktest.Webhook) float64 {
	t.Helper()
	return gauge(t, wh, "prometheus_metrics_proxy_hook_reconciler_releases_total")
}

// sweeps counts the webhook's successful sweeps.
func sweeps(t *testing.T, wh *webhooktest.Webhook) float64 {
	t.Helper()
	return gauge(t, wh, `prometheus_metrics_proxy_hook_reconciler_sweeps_total{result="ok"}`)
}

// gauge sums the samples of one metric of the webhook.
func gauge(t *testing.T, wh *webhooktest.Webhook, metric string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(scrape(t, wh.MetricsURL()), "\n") {
		name, rest, ok := strings.Cut(line, " ")
		if !ok || (name != metric && !strings.HasPrefix(name, metric+"{")) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}
