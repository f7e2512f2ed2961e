package app

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
)

var required = []string{"--redis-addresses=r0:6379, r1:6379,r2:6379", "--lease-url=https://pmph.ns.svc:443/", "--sidecar-image=img:1"}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := ParseConfig(required, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		ListenAddress: ":9443", MetricsAddress: ":8080", ProbeAddress: ":8081", CertDir: "/tls",
		RedisAddresses: []string{"r0:6379", "r1:6379", "r2:6379"}, RedisTimeout: 50 * time.Millisecond,
		LeaseTTL: 30 * time.Second, NoQuorumPolicy: admission.NoQuorumDeny, ShutdownTimeout: 20 * time.Second, ShutdownDelay: 5 * time.Second,
		LogLevel: "info", LogFormat: "json",
		Sidecar: admission.Sidecar{Image: "img:1", PullPolicy: corev1.PullIfNotPresent, Command: []string{admission.SidecarCommand}, Port: 65532,
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")},
			},
			Native: true, ScrapeInterval: time.Minute, LeaseURL: "https://pmph.ns.svc:443"},
	}
	if !equalConfig(c, &want) {
		t.Fatalf("got %+v\nwant %+v", *c, want)
	}
}

func equalConfig(a, b *Config) bool {
	return strings.Join(a.RedisAddresses, ",") == strings.Join(b.RedisAddresses, ",") &&
		a.ListenAddress == b.ListenAddress && a.MetricsAddress == b.MetricsAddress && a.ProbeAddress == b.ProbeAddress &&
		a.CertDir == b.CertDir && a.EnableHTTP2 == b.EnableHTTP2 && a.RedisTimeout == b.RedisTimeout && a.LeaseTTL == b.LeaseTTL &&
		a.NoQuorumPolicy == b.NoQuorumPolicy && reflect.DeepEqual(a.Sidecar, b.Sidecar) && a.ShutdownTimeout == b.ShutdownTimeout && a.ShutdownDelay == b.ShutdownDelay &&
		a.LogLevel == b.LogLevel && a.LogFormat == b.LogFormat && a.RedisPassword == b.RedisPassword
}

func TestEnvAndFlags(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(append(required, "--enable-http2", "--sidecar-port=9000", "--sidecar-cpu-limit=0.5"), env(map[string]string{
		"PMPH_SIDECAR_PORT":         "1234", // the flag wins
		"PMPH_NATIVE_SIDECAR":       "true",
		"PMPH_REDIS_PASSWORD_FILE":  pw,
		"PMPH_NO_QUORUM_POLICY":     "allow",
		"PMPH_SIDECAR_MEMORY_LIMIT": "", // empty means unset
		"PMPH_SCRAPE_INTERVAL":      "15s",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.EnableHTTP2 || !c.Sidecar.Native || c.Sidecar.Port != 9000 || c.RedisPassword != "s3cret" ||
		c.NoQuorumPolicy != admission.NoQuorumAllow || c.Sidecar.Resources.Limits.Cpu().String() != "500m" ||
		c.Sidecar.Resources.Limits.Memory().String() != "32Mi" ||
		c.Sidecar.ScrapeInterval != 15*time.Second {
		t.Fatalf("config %+v", *c)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{append(required, "--listen-address=9443"), nil, `invalid --listen-address "9443": must be host:port`},
		{append(required, "--redis-timeout=0s"), nil, `invalid --redis-timeout "0s": must be a Go duration from 1ms to 10s`},
		{append(required, "--lease-ttl=100ms"), nil, `invalid --lease-ttl "100ms": must be a Go duration from 1s to 24h`},
		{append(required, "--shutdown-timeout=-1s"), nil, `invalid --shutdown-timeout "-1s"`},
		{append(required, "--shutdown-delay=2m"), nil, `invalid --shutdown-delay "2m": must be a Go duration from 0s to 1m`},
		{append(required, "--log-format=xml"), nil, `invalid --log-format "xml": must be json or console`},
		{required, map[string]string{"PMPH_ENABLE_HTTP2": "sure"}, `invalid PMPH_ENABLE_HTTP2 "sure": must be true or false`},
		{[]string{"--redis-addresses=a:1,a:1,b:2", "--lease-url=https://x", "--sidecar-image=i"}, nil, `"a:1" is listed twice`},
		{[]string{"--redis-addresses=a", "--lease-url=https://x", "--sidecar-image=i"}, nil, `"a" must be host:port`},
		{append(required, "extra"), nil, `unexpected argument "extra"`},
		{[]string{"--redis-addresses=a:1", "--lease-url=https://x"}, nil, "missing --sidecar-image (or PMPH_SIDECAR_IMAGE)"},
		{[]string{"--redis-addresses=a:1", "--lease-url=https://x", "--sidecar-image=img 1"}, nil, `invalid --sidecar-image "img 1": must be an image reference without spaces`},
		{[]string{"--lease-url=https://x", "--sidecar-image=i"}, map[string]string{"PMPH_REDIS_ADDRESSES": " "}, "missing --redis-addresses (or PMPH_REDIS_ADDRESSES)"},
		{[]string{"--redis-addresses=a:1", "--sidecar-image=i"}, nil, "missing --lease-url (or PMPH_LEASE_URL)"},
		{append(required, "--sidecar-memory-request=-1Mi"), nil, `invalid --sidecar-memory-request "-1Mi": must be a positive Kubernetes quantity`},
		{append(required, "--metrics-address=:70000"), nil, `invalid --metrics-address ":70000"`},
	}
	for _, tc := range cases {
		_, err := ParseConfig(tc.args, env(tc.env), io.Discard)
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v %v: got %v, want one line containing %q", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestEmptyPasswordFileIsAnError(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ParseConfig(append(required, "--redis-password-file="+pw), env(nil), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("got %v", err)
	}
}
