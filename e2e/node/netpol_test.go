package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkRefusals checks what the NetworkPolicies refuse, each refusal paired
// with a control: the same connection, to the same address and port, from a
// pod the policies allow, gets the server's answer in the same test. A
// refusal caused by anything but a policy (DNS, a wrong port, a server not
// yet up) would fail the control too.
//   - Redis from a pod in another namespace; the control has the webhook's
//     labels in the release namespace.
//   - the webhook's metrics port from a pod in another namespace; the control
//     has the helm test's labels, which the chart lets scrape it.
func (r *release) checkRefusals(t *testing.T) {
	c := r.c
	redisIP := r.podIP(t, "redis")
	webhookIP := r.podIP(t, "webhook")
	outsiders := r.Name + "-outsider"
	c.appNamespace(t, outsiders)
	outsider := probe{outsiders, probePod(t, c, outsiders, "outsider-probe", nil)}
	webhookLike := probe{r.Namespace, probePod(t, c, r.Namespace, "webhook-like-probe", r.selectorLabels(t, "webhook"))}
	testLike := probe{r.Namespace, probePod(t, c, r.Namespace, "test-like-probe", r.selectorLabels(t, "test"))}
	for _, tc := range []struct {
		what             string
		allowed, refused probe
		command          []string
		answer           string
	}{
		{"Redis at " + redisIP + ":6379", webhookLike, outsider,
			[]string{"redis-cli", "-h", redisIP, "-p", "6379", "ping"}, "NOAUTH"},
		{"the webhook's metrics at " + webhookIP + ":8080", testLike, outsider,
			[]string{"wget", "-qO-", "http://" + webhookIP + ":8080/metrics"}, "prometheus_metrics_proxy_hook_"},
	} {
		// The enforcer adds a new pod's address to the policies' sets within
		// seconds of its start; until then the control's pod is not allowed.
		c.timed(t, fmt.Sprintf("control: %s reaches %s", tc.allowed, tc.what), func(ctx context.Context) error {
			return c.poll(ctx, func() (bool, string, error) {
				got := tc.allowed.run(ctx, c, tc.command)
				return strings.Contains(got, tc.answer), firstLine(got), nil
			})
		})
		if t.Failed() {
			return
		}
		if got := tc.refused.run(t.Context(), c, tc.command); strings.Contains(got, tc.answer) {
			t.Errorf("%s reached %s through the NetworkPolicies: %.300s", tc.refused, tc.what, got)
		} else {
			t.Logf("%s refused %s to %s (%s); %s reached it", c.Node.NetworkPolicyEnforcer, tc.what, tc.refused, firstLine(got), tc.allowed)
		}
	}
}

// probe is a pod that runs commands for checkRefusals.
type probe struct{ namespace, pod string }

func (p probe) String() string { return p.namespace + "/" + p.pod }

// run runs command in the pod under the pod's own `timeout 5`, so that a
// refused or dropped connection ends there, and returns its output, or the
// error that says how it failed.
func (p probe) run(ctx context.Context, c *cluster, command []string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	args := append([]string{"-n", p.namespace, "exec", p.pod, "--", "timeout", "5"}, command...)
	out, err := c.Node.Kubectl(ctx, args...)
	if err != nil {
		return err.Error()
	}
	return string(out)
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return first
}

// podIP returns the address of the release's first pod of a component.
func (r *release) podIP(t *testing.T, component string) string {
	t.Helper()
	pods, err := r.pods(t.Context(), component)
	if err != nil || len(pods) == 0 || pods[0].Status.PodIP == "" {
		t.Fatalf("no %s pod with an address in %s: %v", component, r.Namespace, err)
	}
	return pods[0].Status.PodIP
}

// selectorLabels are the labels the chart selects a component's pods by:
// the webhook Deployment's selector with the component's name.
func (r *release) selectorLabels(t *testing.T, component string) map[string]string {
	t.Helper()
	var dep struct {
		Spec struct {
			Selector struct{ MatchLabels map[string]string }
		}
	}
	if err := r.c.getJSON(t.Context(), &dep, "-n", r.Namespace, "deployment", r.Fullname); err != nil {
		t.Fatal(err)
	}
	labels := dep.Spec.Selector.MatchLabels
	labels["app.kubernetes.io/component"] = component
	return labels
}

// probePod runs a pod of the Redis image (for redis-cli) that sleeps, with
// the given labels, never Ready so that no Service sends it traffic, and
// returns its name once it runs.
func probePod(t *testing.T, c *cluster, namespace, name string, labels map[string]string) string {
	t.Helper()
	labelJSON, err := json.Marshal(labels)
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(manifest, []byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: %s
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  securityContext:
    runAsNonRoot: true
    runAsUser: 999
    runAsGroup: 999
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: probe
    image: %s
    command: [sleep, "3600"]
    readinessProbe:
      exec: {command: ["false"]}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
`, name, labelJSON, redisImage(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	c.kubectl(t, "-n", namespace, "apply", "-f", manifest)
	c.kubectl(t, "-n", namespace, "wait", "--for=jsonpath={.status.phase}=Running", "pod/"+name, "--timeout=2m")
	return name
}
