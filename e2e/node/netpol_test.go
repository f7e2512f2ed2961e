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

// checkRefusals checks that a pod in another namespace cannot reach a Redis
// node, paired with a control: the same connection to the same address and
// port from a pod the policies allow (the webhook's labels, in the release
// namespace) gets Redis's answer. A refusal caused by anything but the
// policy would fail the control too.
func (r *release) checkRefusals(t *testing.T) {
	c := r.c
	redisIP := strings.TrimSpace(c.kubectl(t, "-n", r.Namespace, "get", "pod", r.Fullname+"-redis-0", "-o", "jsonpath={.status.podIP}"))
	var dep struct {
		Spec struct {
			Selector struct{ MatchLabels map[string]string }
		}
	}
	if err := json.Unmarshal([]byte(c.kubectl(t, "-n", r.Namespace, "get", "deployment", r.Fullname, "-o", "json")), &dep); err != nil {
		t.Fatal(err)
	}
	outsiders := r.Name + "-outsider"
	c.appNamespace(t, outsiders)
	allowed := probePod(t, c, r.Namespace, "webhook-like-probe", dep.Spec.Selector.MatchLabels)
	refused := probePod(t, c, outsiders, "outsider-probe", nil)
	ping := func(ns, pod string) string {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		out, err := c.Node.Kubectl(ctx, "-n", ns, "exec", pod, "--", "timeout", "5", "redis-cli", "-h", redisIP, "-p", "6379", "ping")
		return fmt.Sprintf("%s (%v)", strings.TrimSpace(string(out)), err)
	}
	if got := ping(r.Namespace, allowed); !strings.Contains(got, "NOAUTH") {
		t.Fatalf("control: a pod with the webhook's labels got no answer from Redis at %s:6379: %s", redisIP, got)
	}
	if got := ping(outsiders, refused); strings.Contains(got, "NOAUTH") {
		t.Errorf("a pod in namespace %s reached Redis at %s:6379 through the NetworkPolicies: %s", outsiders, redisIP, got)
	}
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
