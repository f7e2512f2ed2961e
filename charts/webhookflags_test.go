package charts

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/cmd/prometheus-metrics-proxy-hook-webhook/app"
)

// webhookCommand is where the Dockerfile installs the webhook binary.
const webhookCommand = "/usr/local/bin/prometheus-metrics-proxy-hook-webhook"

// The arguments the chart gives the webhook are accepted by the webhook's
// own flag parser (the contract of docs/configuration.md, checked against
// the code), and mean what the chart intends.
func TestWebhookAcceptsChartArgs(t *testing.T) {
	cases := []renderOpts{
		{values: "redis: {replicas: 5}"},
		{values: "sidecar: {native: true, resources: {limits: {cpu: 200m, memory: 64Mi}}}\nwebhook: {noQuorumPolicy: allow, leaseTTL: 1m, logLevel: debug, logFormat: console, enableHTTP2: true}"},
		{values: "redis: {enabled: false}\nexternalRedis: {addresses: ['[fd00::1]:6379', '10.0.0.2:6379', 'redis-c.corp:7000']}"},
	}
	for _, f := range ciValuesFiles(t) {
		cases = append(cases, renderOpts{valuesFile: f})
	}
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, o := range cases {
		t.Run(o.valuesFile+o.values, func(t *testing.T) {
			r := mustRender(t, o)
			d := r.deployment(t)
			c := container(t, d.Spec.Template.Spec, "webhook")
			if !slices.Equal(c.Command, []string{webhookCommand}) {
				t.Fatalf("command %q, want [%s]", c.Command, webhookCommand)
			}
			args := slices.Clone(c.Args)
			for i, a := range args {
				if strings.HasPrefix(a, "--redis-password-file=") {
					args[i] = "--redis-password-file=" + pwFile
				}
			}
			cfg, err := app.ParseConfig(args, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatalf("the webhook refuses the chart's arguments: %v\nargs: %q", err, args)
			}
			addrs, _ := webhookArg(t, d, "redis-addresses")
			if strings.Join(cfg.RedisAddresses, ",") != addrs {
				t.Errorf("parsed addresses %v, chart %s", cfg.RedisAddresses, addrs)
			}
			image, _ := webhookArg(t, d, "sidecar-image")
			leaseURL, _ := webhookArg(t, d, "lease-url")
			if cfg.Sidecar.Image != image || cfg.Sidecar.LeaseURL != leaseURL || cfg.CertDir != "/tls" {
				t.Errorf("parsed sidecar %+v, cert dir %s", cfg.Sidecar, cfg.CertDir)
			}
			_, hasPw := webhookArg(t, d, "redis-password-file")
			if hasPw && cfg.RedisPassword != "secret" {
				t.Errorf("password file not read")
			}
			if !hasPw && cfg.RedisPassword != "" {
				t.Errorf("password without a file")
			}
		})
	}
}
