package node

// The chart's variants on the node, one release after another: its defaults
// (persistence on), each ci/*-values.yaml that can run here, and the
// regular-container injection mode. TestChartOnTheNode covers
// ci/no-persistence-values.yaml and the native sidecar.
//
// ci/istio-values.yaml does not apply: no istiod runs on the node, so its
// pods would only stay unmeshed, which the other variants already show.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
)

// TestChartDefaults installs the chart with its defaults: Redis keeps its
// append-only file on PersistentVolumeClaims of the cluster's default
// StorageClass (local volumes of the node).
func TestChartDefaults(t *testing.T) {
	c := sharedCluster(t)
	r := c.installChart(t, installOptions{Name: "defaults", CIValues: []string{"default-values.yaml"}, LocalVolumes: true})
	r.waitReady(t, true)
	r.checkVolumes(t)
	t.Run("helm test", r.helmTest)
	t.Run("webhook metrics through kubectl port-forward", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		addr, stop, err := c.Node.PortForward(ctx, r.Namespace, "deployment/"+r.Fullname, 8080)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "prometheus_metrics_proxy_hook_redis_node_up{") {
			t.Errorf("GET /metrics through %s: %s, %v; want the webhook's metrics:\n%.2000s", addr, resp.Status, err, body)
		}
	})
}

// TestChartNetworkPolicies installs the chart with its NetworkPolicies on
// and checks what they must allow with real connections from real pods: the
// API server reaches the webhook (admission), the webhook reaches Redis and
// DNS (helm test's quorum test) and the API server (its leader Lease), the
// helm test reaches the webhook's metrics, and the sidecars reach the lease
// API (their start gate opens); and what they must refuse, each refusal
// paired with a control (checkRefusals). The refusals skip, saying why, only
// on a kernel where no enforcer can run (kubenode picks kube-network-policies
// or kube-router by what the kernel has).
func TestChartNetworkPolicies(t *testing.T) {
	c := sharedCluster(t)
	// As a user would: the API server's real address and port replace the
	// kind address of ci/.
	_, port, _ := strings.Cut(strings.TrimPrefix(c.Node.URL, "https://"), ":")
	r := c.installChart(t, installOptions{Name: "netpol", CIValues: []string{"networkpolicy-values.yaml"}, LocalVolumes: true,
		Set: []string{"networkPolicy.apiServer.peers[0].ipBlock.cidr=" + c.Node.IP + "/32", "networkPolicy.apiServer.ports={" + port + "}"}})
	r.waitReady(t, true)
	t.Run("helm test", r.helmTest)
	t.Run("the webhook renews its leader Lease", func(t *testing.T) { r.checkLeaderRenews(t) })
	t.Run("sidecars reach the lease API", func(t *testing.T) {
		w := workload{Name: "netpol-app", Namespace: "netpol-app", Key: "netpol", Size: 2, Replicas: 2}
		c.appNamespace(t, w.Namespace)
		w.apply(t, c)
		w.waitGateOpen(t, c)
	})
	t.Run("refusals", func(t *testing.T) {
		if reason := c.Node.NetworkPoliciesUnenforced; reason != "" {
			t.Skip("NetworkPolicies are not enforced on this node: " + reason)
		}
		r.checkRefusals(t)
	})
}

// TestChartExternalRedis runs three Redis nodes outside the release, one of
// them on another port, points externalRedis at them as
// ci/external-redis-values.yaml does, and checks that they gate pods.
func TestChartExternalRedis(t *testing.T) {
	c := sharedCluster(t)
	password := randomPassword(t)
	addrs := startExternalRedis(t, c, "external-redis", password)
	r := c.installChart(t, installOptions{Name: "extredis", CIValues: []string{"external-redis-values.yaml"},
		Set: []string{"externalRedis.addresses={" + strings.Join(addrs, ",") + "}", "externalRedis.password=" + password,
			// ci/ leaves the quorum test out for lack of Redis nodes; here they run.
			"tests.enabled=true"}})
	r.waitReady(t, false)
	t.Run("helm test", r.helmTest)
	t.Run("semaphore of 2 gates 3 replicas", func(t *testing.T) {
		checkSemaphore(t, c, workload{Name: "ext-app", Namespace: "ext-app", Key: "ext", Size: 2, Replicas: 3})
	})
}

// TestChartRegularSidecar injects the sidecar as a regular container
// (sidecar.native=false), which the kubelet starts beside the app.
func TestChartRegularSidecar(t *testing.T) {
	c := sharedCluster(t)
	r := c.installChart(t, installOptions{Name: "regular", LocalVolumes: true, Set: []string{"sidecar.native=false"}})
	r.waitReady(t, true)
	w := workload{Name: "regular-app", Namespace: "regular-app", Key: "regular", Size: 2, Replicas: 3}
	checkSemaphore(t, c, w)
	out := c.kubectl(t, "-n", w.Namespace, "get", "pods", "-l", "app="+w.Name, "-o", "json")
	var pods corev1.PodList
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		t.Fatalf("decoding the pods: %v", err)
	}
	for _, p := range pods.Items {
		named := func(c corev1.Container) bool { return c.Name == admission.ContainerName }
		if slices.ContainsFunc(p.Spec.InitContainers, named) || !slices.ContainsFunc(p.Spec.Containers, named) {
			t.Errorf("pod %s has init containers %v and containers %v; want %s among the containers only",
				p.Name, names(p.Spec.InitContainers), names(p.Spec.Containers), admission.ContainerName)
		}
	}
}

func names(containers []corev1.Container) []string {
	var list []string
	for _, c := range containers {
		list = append(list, c.Name)
	}
	return list
}

func randomPassword(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// checkLeaderRenews waits until the webhook's leader Lease is held by one of
// its pods and renewed: the webhook reaches the API server.
func (r *release) checkLeaderRenews(t *testing.T) {
	lease := r.Fullname + "-reconciler"
	first := ""
	r.c.timed(t, "leader Lease renewed", func(ctx context.Context) error {
		return r.c.poll(ctx, func() (bool, string, error) {
			out, err := r.c.Node.Kubectl(ctx, "-n", r.Namespace, "get", "lease", lease, "-o", "jsonpath={.spec.holderIdentity} {.spec.renewTime}")
			if err != nil {
				return false, err.Error(), nil
			}
			holder, renewed, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
			if first == "" {
				first = renewed
			}
			return strings.HasPrefix(holder, r.Fullname) && renewed != first, fmt.Sprintf("holder %q renewed %q (first seen %q)", holder, renewed, first), nil
		})
	})
}
