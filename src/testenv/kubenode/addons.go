package kubenode

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
)

// startCoreDNS applies the CoreDNS manifest and waits for its pod to be
// Ready, which its readiness probe makes depend on having synced with the
// API server.
func (n *Node) startCoreDNS(ctx context.Context) error {
	path := filepath.Join(n.Dir, "coredns.yaml")
	if err := writeFiles(map[string]string{path: coreDNSManifest(n.opts.CoreDNSImage)}); err != nil {
		return err
	}
	if _, err := n.Kubectl(ctx, "apply", "-f", path); err != nil {
		return err
	}
	err := waitFor(ctx, nil, func(ctx context.Context) error {
		var dep struct {
			Status struct{ ReadyReplicas int }
		}
		if err := n.Do(ctx, http.MethodGet, "/apis/apps/v1/namespaces/kube-system/deployments/coredns", nil, &dep); err != nil {
			return err
		}
		if dep.Status.ReadyReplicas < 1 {
			return fmt.Errorf("the coredns Deployment has no Ready pod yet")
		}
		return nil
	})
	if err != nil {
		out, _ := n.Kubectl(context.WithoutCancel(ctx), "-n", "kube-system", "describe", "pods", "-l", "k8s-app=kube-dns")
		return fmt.Errorf("cluster DNS did not start: %w\n%s", err, tail(string(out), 25))
	}
	n.logf("CoreDNS is Ready at %s", n.ClusterDNS)
	return nil
}

// httpHealthy probes http://127.0.0.1:port/healthz (or the given path).
func httpHealthy(port int, path ...string) func(context.Context) error {
	p := "/healthz"
	if len(path) > 0 {
		p = path[0]
	}
	return func(ctx context.Context) error {
		return get(ctx, http.DefaultTransport, fmt.Sprintf("http://127.0.0.1:%d%s", port, p))
	}
}

// httpsHealthy probes a component's /healthz on loopback; its serving
// certificate is one the component made up itself.
func httpsHealthy(port int) func(context.Context) error {
	rt := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // loopback health probe
	return func(ctx context.Context) error {
		return get(ctx, rt, fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
	}
}

func get(ctx context.Context, rt http.RoundTripper, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// relay forwards every connection accepted on l to target until l is closed.
func relay(l net.Listener, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer up.Close()
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(up, c); closeWrite(up) }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, up); closeWrite(c) }()
			wg.Wait()
		}()
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
