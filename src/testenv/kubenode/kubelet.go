package kubenode

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
)

// kubeletConfig is the KubeletConfiguration that runs pods on this kind of
// machine (Debian 12, cgroup v1 with cgroup2 mounted beside it, no swap
// accounting, no systemd): see /work/shared/real-node-notes.md.
func kubeletConfig(dir, socket string, a addressing, port, healthzPort int) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# kubelet 1.37 refuses cgroup v1 unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%[2]s
imageServiceEndpoint: unix://%[2]s
failSwapOn: false
# The machine's own memory and disk say nothing about a test node; without
# these the kubelet evicts pods or garbage-collects the images a test
# imported.
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
clusterDNS: [%[3]s]
clusterDomain: %[4]s
resolvConf: %[1]s/resolv.conf
podCIDR: %[5]s
address: %[6]s
port: %[7]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[8]d
podLogsDir: %[1]s/pods-logs
volumePluginDir: %[1]s/volume-plugins
# The API server dials the kubelet for logs, exec and port-forward without a
# client certificate; the kubelet listens only on the node's own address.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
serializeImagePulls: false
`, dir, socket, clusterDNSIP, clusterDomain, a.podCIDR, a.nodeIP, port, healthzPort)
}

// kubeconfig is a kubeconfig for the admin token, for the node's components.
func kubeconfig(server, token string, caPEM []byte) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubenode
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: kubenode
  context:
    cluster: kubenode
    user: admin
current-context: kubenode
`, server, base64.StdEncoding.EncodeToString(caPEM), token)
}

func writeFiles(files map[string]string) error {
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return fmt.Errorf("cannot write %s: %w", path, err)
		}
	}
	return nil
}
