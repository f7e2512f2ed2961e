package kubenode

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
)

const (
	pauseRef   = images.PauseRef
	coreDNSRef = images.CoreDNSRef
	busyboxRef = images.BusyboxRef
)

// TestNode starts a node, runs pods on it, checks the Service, DNS, logs and
// exec paths, stops it and checks that nothing is left, then starts a second
// node on the same machine.
func TestNode(t *testing.T) {
	opts := testOptions(t)
	forwarding := readForwarding(t)
	if r, _ := readRecord(); r != nil && r.IPForward != "" {
		// A crashed run left forwarding on; Start's sweep restores this.
		forwarding = r.IPForward
	}
	sockets := shimSockets()
	first := startNode(t, opts)
	t.Run("registered and Ready with its own address", func(t *testing.T) { checkNodeObject(t, first) })
	t.Run("pods, Service, DNS, logs and exec", func(t *testing.T) { checkWorkloads(t, first) })
	dir := first.Dir
	if err := first.Stop(); err != nil {
		t.Fatalf("Stop failed: %v", err)
	}
	t.Run("teardown leaves nothing behind", func(t *testing.T) { checkClean(t, dir, forwarding, sockets) })

	second := startNode(t, opts)
	t.Run("a second node starts after teardown", func(t *testing.T) {
		checkNodeObject(t, second)
		ns := "second"
		mustKubectl(t, second, "create", "namespace", ns)
		podIP := runServer(t, second, ns, "web")
		if !mustPrefix(t, second.PodCIDR).Contains(netip.MustParseAddr(podIP)) {
			t.Errorf("pod IP %s is outside the pod network %s", podIP, second.PodCIDR)
		}
	})
	dir = second.Dir
	if err := second.Stop(); err != nil {
		t.Fatalf("Stop failed: %v", err)
	}
	checkClean(t, dir, forwarding, sockets)
}

func startNode(t *testing.T, opts Options) *Node {
	t.Helper()
	started := time.Now()
	n := StartForTest(t, opts)
	t.Logf("the node started in %s", time.Since(started).Round(100*time.Millisecond))
	return n
}

// testOptions builds the pause, CoreDNS and busybox images, pushes them to a
// loopback registry and points containerd's mirrors for their hosts at it.
func testOptions(t *testing.T) Options {
	t.Helper()
	if reason := Unsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	started := time.Now()
	built, err := images.Build(ctx, images.Options{WorkDir: t.TempDir()}, images.NamePause, images.NameCoreDNS, images.NameBusybox)
	if err != nil {
		t.Fatalf("building the images: %v", err)
	}
	reg := registry.StartT(t)
	if err := reg.PushAll(ctx, built); err != nil {
		t.Fatal(err)
	}
	t.Logf("built and pushed the images in %s", time.Since(started).Round(100*time.Millisecond))
	mirrors := map[string]string{}
	for _, host := range images.Hosts(built) {
		mirrors[host] = "http://" + reg.Host
	}
	return Options{SandboxImage: pauseRef, CoreDNSImage: coreDNSRef, Mirrors: mirrors}
}

func checkNodeObject(t *testing.T, n *Node) {
	out := mustKubectl(t, n, "get", "node", n.Name, "-o",
		`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.addresses[?(@.type=="InternalIP")].address}`)
	if got, want := strings.TrimSpace(out), "True "+n.IP; got != want {
		t.Errorf("node Ready status and InternalIP = %q, want %q", got, want)
	}
}

// checkWorkloads runs a web server pod behind a Service and a client pod,
// and reaches the server from the client by ClusterIP and by name.
func checkWorkloads(t *testing.T, n *Node) {
	ns := "workloads"
	mustKubectl(t, n, "create", "namespace", ns)
	podIP := runServer(t, n, ns, "web")
	if !mustPrefix(t, n.PodCIDR).Contains(netip.MustParseAddr(podIP)) {
		t.Errorf("pod IP %s is outside the pod network %s", podIP, n.PodCIDR)
	}
	mustKubectl(t, n, "-n", ns, "expose", "pod", "web", "--port=80", "--target-port=8080")
	clusterIP := strings.TrimSpace(mustKubectl(t, n, "-n", ns, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"))
	mustKubectl(t, n, "-n", ns, "run", "client", "--image="+busyboxRef, "--restart=Never", "--command", "--", "sleep", "3600")
	mustKubectl(t, n, "-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")

	t.Run("kubectl logs", func(t *testing.T) {
		if out := mustKubectl(t, n, "-n", ns, "logs", "web"); !strings.Contains(out, "serving on 8080") {
			t.Errorf("kubectl logs web = %q, want the line the server printed", out)
		}
	})
	t.Run("ClusterIP routes", func(t *testing.T) {
		out := mustKubectl(t, n, "-n", ns, "exec", "client", "--", "timeout", "5", "wget", "-qO-", "http://"+clusterIP+"/")
		if strings.TrimSpace(out) != "hello from web" {
			t.Errorf("GET http://%s/ from a pod = %q, want the server's page", clusterIP, out)
		}
	})
	t.Run("cluster DNS", func(t *testing.T) {
		name := "web." + ns + ".svc.cluster.local"
		out := mustKubectl(t, n, "-n", ns, "exec", "client", "--", "nslookup", name)
		if !strings.Contains(out, clusterIP) {
			t.Errorf("nslookup %s in a pod said %q, want the address %s", name, out, clusterIP)
		}
		out = mustKubectl(t, n, "-n", ns, "exec", "client", "--", "timeout", "5", "wget", "-qO-", "http://web/")
		if strings.TrimSpace(out) != "hello from web" {
			t.Errorf("GET http://web/ (the Service by its short name) = %q, want the server's page", out)
		}
	})
	t.Run("kubectl port-forward", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		addr, stop, err := n.PortForward(ctx, ns, "pod/web", 8080)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		if out, err := httpGet(ctx, "http://"+addr+"/"); err != nil || strings.TrimSpace(out) != "hello from web" {
			t.Errorf("GET through kubectl port-forward at %s = %q, %v; want the server's page", addr, out, err)
		}
	})
	t.Run("local volume of the default StorageClass", func(t *testing.T) { checkLocalVolume(t, n, ns) })
	t.Run("NetworkPolicy enforced", func(t *testing.T) { checkNetworkPolicy(t, n, ns, clusterIP) })
}

// checkLocalVolume binds a claim of the default StorageClass to a local
// volume, has a pod write to it, and deletes both again.
func checkLocalVolume(t *testing.T, n *Node, ns string) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	names, err := n.CreateLocalVolumes(ctx, "check", 1, "10Mi")
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(n.Dir, "claim.yaml")
	if err := os.WriteFile(manifest, []byte(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 10Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
  containers:
  - name: writer
    image: `+busyboxRef+`
    command: [sh, -c, "echo written > /data/file"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	mustKubectl(t, n, "-n", ns, "apply", "-f", manifest)
	mustKubectl(t, n, "-n", ns, "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/writer", "--timeout=120s")
	if got := strings.TrimSpace(mustKubectl(t, n, "-n", ns, "get", "pvc", "data", "-o", "jsonpath={.spec.storageClassName} {.spec.volumeName}")); got != StorageClass+" "+names[0] {
		t.Errorf("the claim's StorageClass and volume = %q, want %q", got, StorageClass+" "+names[0])
	}
	file := filepath.Join(n.VolumeDir(names[0]), "file")
	if data, err := os.ReadFile(file); err != nil || strings.TrimSpace(string(data)) != "written" {
		t.Errorf("%s on the node = %q, %v; want what the pod (uid 1000, fsGroup 1000) wrote", file, data, err)
	}
	mustKubectl(t, n, "-n", ns, "delete", "pod", "writer")
	mustKubectl(t, n, "-n", ns, "delete", "pvc", "data")
	if err := n.DeleteLocalVolumes(ctx, names); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.VolumeDir(names[0])); !os.IsNotExist(err) {
		t.Errorf("the volume's directory is left after DeleteLocalVolumes: %v", err)
	}
}

func httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s answered %s", url, resp.Status)
	}
	return string(body), err
}

// checkNetworkPolicy lets only pods labelled access=allowed reach the web
// pod, then checks that the unlabelled client is refused and, as the control,
// that a labelled pod still gets through to the same address and port.
func checkNetworkPolicy(t *testing.T, n *Node, ns, clusterIP string) {
	if n.NetworkPoliciesUnenforced != "" {
		t.Skip(n.NetworkPoliciesUnenforced)
	}
	// Not t.TempDir: kubectl splits -f at the commas of a subtest's name.
	policy := filepath.Join(n.Dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-allowed-only
spec:
  podSelector:
    matchLabels: {run: web}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {access: allowed}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	mustKubectl(t, n, "-n", ns, "apply", "-f", policy)
	mustKubectl(t, n, "-n", ns, "run", "allowed", "--labels=run=allowed,access=allowed", "--image="+busyboxRef,
		"--restart=Never", "--command", "--", "sleep", "3600")
	mustKubectl(t, n, "-n", ns, "wait", "--for=condition=Ready", "pod/allowed", "--timeout=120s")
	url := "http://" + clusterIP + "/"
	fetch := func(pod string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		out, err := n.Kubectl(ctx, "-n", ns, "exec", pod, "--", "timeout", "5", "wget", "-qO-", url)
		return string(out), err
	}
	// The enforcer applies a new policy within seconds; until then the
	// client still gets through.
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := fetch("client")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client still reaches %s a minute after the policy: %q", url, out)
		}
		time.Sleep(time.Second)
	}
	if out, err := fetch("allowed"); err != nil || strings.TrimSpace(out) != "hello from web" {
		t.Errorf("the allowed pod's GET %s = %q, %v; want the page (the control of the refusal)", url, out, err)
	}
}

// runServer starts a busybox httpd pod and returns its IP once it is Ready.
func runServer(t *testing.T, n *Node, ns, name string) string {
	t.Helper()
	script := "mkdir -p /tmp/www && echo 'hello from " + name + "' > /tmp/www/index.html && echo 'serving on 8080' && exec httpd -f -p 8080 -h /tmp/www"
	mustKubectl(t, n, "-n", ns, "run", name, "--image="+busyboxRef, "--restart=Never", "--port=8080",
		"--command", "--", "sh", "-c", script)
	mustKubectl(t, n, "-n", ns, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=120s")
	return strings.TrimSpace(mustKubectl(t, n, "-n", ns, "get", "pod", name, "-o", "jsonpath={.status.podIP}"))
}

// checkClean asserts that a stopped node left no process, mount, link,
// iptables chain, ipset, cgroup, record or directory behind.
func checkClean(t *testing.T, dir, forwarding string, sockets map[string]bool) {
	t.Helper()
	if pids := markedPids(); len(pids) > 0 {
		t.Errorf("processes of the node are still running: %v", pids)
	}
	if pids := podPids(); len(pids) > 0 {
		t.Errorf("pod processes are still running: %v", pids)
	}
	if dirs := kubepodsDirs(); len(dirs) > 0 {
		t.Errorf("the kubelet's cgroups are still there: %v", dirs)
	}
	if mounts := mountsUnder([]string{dir}); len(mounts) > 0 {
		t.Errorf("mounts under %s are left: %v", dir, mounts)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", bridgeName)); err == nil {
		t.Errorf("the bridge %s is still there", bridgeName)
	}
	if addrs := nodeAddresses(); len(addrs) > 0 {
		t.Errorf("the node's addresses are still on the loopback interface: %v", addrs)
	}
	if chains := leftoverChains(); len(chains) > 0 {
		t.Errorf("iptables chains are left: %v", chains)
	}
	if out, err := exec.Command("nft", "list", "table", "inet", knpTable).CombinedOutput(); err == nil {
		t.Errorf("the nftables table of kube-network-policies is left:\n%s", out)
	}
	if sets := leftoverSets(); len(sets) > 0 {
		t.Errorf("ipsets are left: %v", sets)
	}
	if got := readForwarding(t); got != forwarding {
		t.Errorf("%s is %s after Stop, want %s as before the node", ipForward, got, forwarding)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("the working directory %s is still there", dir)
	}
	if left, _ := filepath.Glob(filepath.Join(cniResultsDir, cniNetworkName+"-*")); len(left) > 0 {
		t.Errorf("CNI results of the node's network are left: %v", left)
	}
	if _, err := os.Stat("/var/lib/kubelet/device-plugins"); err == nil {
		t.Error("the kubelet's /var/lib/kubelet/device-plugins is left")
	}
	for name := range shimSockets() {
		if !sockets[name] {
			t.Errorf("a container shim's socket is left: %s", filepath.Join(shimSocketDir, name))
		}
	}
	if _, err := os.Stat(recordPath); err == nil {
		t.Errorf("the record %s is still there", recordPath)
	}
}

func shimSockets() map[string]bool {
	names := map[string]bool{}
	entries, _ := os.ReadDir(shimSocketDir)
	for _, e := range entries {
		names[e.Name()] = true
	}
	return names
}

func readForwarding(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(ipForward)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func mustKubectl(t *testing.T, n *Node, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out, err := n.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return string(out)
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return p
}
