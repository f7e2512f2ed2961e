package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

const (
	// demoLeaseTTL is the webhook's --lease-ttl in the demo: short enough
	// that the walkthrough's sidecar renews a few times while it runs.
	demoLeaseTTL = 6 * time.Second
	// demoRedisTimeout is the webhook's --redis-timeout in the demo. Its
	// Redis nodes fsync every write (appendfsync always, as in production)
	// on the disk of a workstation that may be busy building, where an
	// fsync takes longer than the default 50 ms, and the walkthrough's bare
	// pods have no controller to retry a denial for no quorum.
	demoRedisTimeout = time.Second
	// sidecarImage is what the injected container would run in a cluster;
	// nothing pulls it here.
	sidecarImage = "ghcr.io/kaidotio/prometheus-metrics-proxy-hook:0.1.0"
	// webhookReadyTimeout bounds the wait for /readyz.
	webhookReadyTimeout = time.Minute
)

// webhook is the webhook binary running as a local process with a
// certificate for 127.0.0.1, where the API server calls it by URL.
type webhook struct {
	*child
	baseURL string
	caFile  string
	caPEM   []byte
}

// startWebhook writes a CA and serving certificate into dir/certs (the
// layout the chart's cert-manager Secret has: tls.crt, tls.key, ca.crt) and
// starts `prometheus-metrics-proxy-hook-webhook` on free loopback ports.
func startWebhook(ctx context.Context, bin, dir, kubeconfig string, redisAddrs []string, redisPassword string) (*webhook, error) {
	certs, err := kubetest.NewServingCert("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create the webhook's certificate directory: %w", err)
	}
	for name, data := range map[string][]byte{"tls.crt": certs.CertPEM, "tls.key": certs.KeyPEM, "ca.crt": certs.CACertPEM} {
		if err := os.WriteFile(filepath.Join(certDir, name), data, 0o600); err != nil {
			return nil, fmt.Errorf("cannot write the webhook's %s: %w", name, err)
		}
	}
	passwordFile := filepath.Join(dir, "redis-password")
	if err := os.WriteFile(passwordFile, []byte(redisPassword+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the Redis password file: %w", err)
	}
	// The ports are free when picked; another process may take one before
	// the webhook binds it, and then a new set is tried.
	for attempt := 1; ; attempt++ {
		ports, err := localproc.FreePorts(3)
		if err != nil {
			return nil, err
		}
		base := "https://127.0.0.1:" + strconv.Itoa(ports[0])
		c, err := startChild("webhook", filepath.Join(dir, "webhook.log"), os.Environ(), bin,
			"--listen-address=127.0.0.1:"+strconv.Itoa(ports[0]),
			"--metrics-address=127.0.0.1:"+strconv.Itoa(ports[1]),
			"--probe-address=127.0.0.1:"+strconv.Itoa(ports[2]),
			"--cert-dir="+certDir,
			"--redis-addresses="+strings.Join(redisAddrs, ","),
			"--redis-password-file="+passwordFile,
			"--lease-url="+base,
			"--lease-ttl="+demoLeaseTTL.String(),
			"--redis-timeout="+demoRedisTimeout.String(),
			"--sidecar-image="+sidecarImage,
			// TokenReviews and pod lookups for the lease API.
			"--kubeconfig="+kubeconfig,
		)
		if err != nil {
			return nil, err
		}
		err = waitHTTP(ctx, c, "http://127.0.0.1:"+strconv.Itoa(ports[2])+"/readyz", webhookReadyTimeout)
		if err == nil {
			return &webhook{child: c, baseURL: base, caFile: filepath.Join(certDir, "ca.crt"), caPEM: certs.CACertPEM}, nil
		}
		_ = c.stop(10 * time.Second)
		if attempt < 3 && strings.Contains(c.logTail(20), "address already in use") {
			continue
		}
		return nil, fmt.Errorf("the webhook did not become ready: %w; last lines of %s:\n%s", err, c.logPath, c.logTail(20))
	}
}

// waitHTTP polls url until it answers 200, the process exits or timeout
// passes.
func waitHTTP(ctx context.Context, c *child, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET %s answered %s", url, resp.Status)
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s %w (%v)", c.name, errExited, c.err)
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer in time (last: %v): %w", url, err, context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
