package node

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// externalRedisNodes name the Services of startExternalRedis's nodes and
// their ports, as in ci/external-redis-values.yaml: the third on another
// port.
var externalRedisNodes = []struct {
	service string
	port    int
}{{"redis-a", 6379}, {"redis-b", 6379}, {"redis-c", 6380}}

// startExternalRedis runs three independent Redis servers with a password in
// a namespace of their own, from the project's Redis image, each behind a
// Service, and returns their addresses. They go when t ends.
func startExternalRedis(t *testing.T, c *cluster, namespace, password string) []string {
	t.Helper()
	c.appNamespace(t, namespace)
	dir := t.TempDir()
	conf := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(conf, []byte("port 6379\nbind * -::*\ndir /data\nappendonly no\nsave \"\"\nrequirepass \""+password+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.kubectl(t, "-n", namespace, "create", "secret", "generic", "redis-conf", "--from-file=redis.conf="+conf)
	manifest := filepath.Join(dir, "redis.yaml")
	if err := os.WriteFile(manifest, []byte(externalRedisManifest(redisImage(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	c.kubectl(t, "-n", namespace, "apply", "-f", manifest)
	c.waitReplicasReady(t, namespace, "statefulset", "redis")
	var addrs []string
	for _, n := range externalRedisNodes {
		addrs = append(addrs, fmt.Sprintf("%s.%s.svc.cluster.local:%d", n.service, namespace, n.port))
	}
	return addrs
}

// externalRedisManifest is a StatefulSet of three Redis servers, restricted
// PSS compliant, and one Service per server.
func externalRedisManifest(image string) string {
	m := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: redis}
spec:
  clusterIP: None
  selector: {app: redis}
  ports: [{port: 6379}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: redis}
spec:
  serviceName: redis
  replicas: %d
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: redis}
  template:
    metadata:
      labels: {app: redis}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: redis
        image: %s
        command: [redis-server, /etc/redis/redis.conf]
        ports: [{containerPort: 6379}]
        readinessProbe:
          tcpSocket: {port: 6379}
          periodSeconds: 1
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: conf, mountPath: /etc/redis, readOnly: true}
        - {name: data, mountPath: /data}
      volumes:
      - name: conf
        secret: {secretName: redis-conf, defaultMode: 0440}
      - name: data
        emptyDir: {}
`, len(externalRedisNodes), image)
	for i, n := range externalRedisNodes {
		m += fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %s}
spec:
  selector: {statefulset.kubernetes.io/pod-name: redis-%d}
  ports: [{port: %d, targetPort: 6379}]
`, n.service, i, n.port)
	}
	return m
}

// redisImage is the Redis image the chart's defaults name, which the node
// pulls from the loopback registry.
func redisImage(t *testing.T) string {
	t.Helper()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	chart, err := images.ReadChart(root)
	if err != nil {
		t.Fatal(err)
	}
	return chart.RedisRef()
}
