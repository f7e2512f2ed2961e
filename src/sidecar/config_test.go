package sidecar_test

import (
	"errors"
	"io"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar"
)

const (
	testHolder = "0123456789abcdef0123456789abcdef"
	testCA     = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
)

func parse(args []string, env map[string]string) (sidecar.Config, error) {
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	readFile := func(name string) ([]byte, error) {
		if name == "/ca.pem" {
			return []byte(testCA), nil
		}
		return nil, fs.ErrNotExist
	}
	return sidecar.ParseConfig(args, lookup, readFile, io.Discard)
}

func leaseEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"PMPH_LEASE_URL": "https://pmph.pmph-system.svc:443", "PMPH_LEASE_CA": testCA,
		"PMPH_LEASE_NAMESPACE": "team-a", "PMPH_LEASE_KEY": "batch", "PMPH_LEASE_SIZE": "3",
		"PMPH_LEASE_SLOT": "2", "PMPH_LEASE_HOLDER": testHolder,
	}
	for k, v := range extra {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return env
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parse(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := sidecar.Config{
		ListenAddress: ":65532", UpstreamTimeout: 8 * time.Second, CacheMaxBytes: 16 << 20,
		GracePeriod: 30 * time.Second, ScrapeInterval: time.Minute, FinalFetchInterval: 500 * time.Millisecond, LogLevel: zerolog.InfoLevel, LogFormat: "json",
	}
	if cfg.Upstream.String() != "http://127.0.0.1:8080/metrics" {
		t.Errorf("upstream %s", cfg.Upstream)
	}
	cfg.Upstream = nil
	if cfg != want {
		t.Errorf("defaults\n%+v\nwant\n%+v", cfg, want)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, c sidecar.Config)
		wantErr string // the whole one-line message
	}{
		{name: "flag wins over env", args: []string{"--upstream-timeout=2s"}, env: map[string]string{"PMPH_UPSTREAM_TIMEOUT": "3s"},
			check: func(t *testing.T, c sidecar.Config) {
				if c.UpstreamTimeout != 2*time.Second {
					t.Errorf("timeout %s", c.UpstreamTimeout)
				}
			}},
		{name: "env used", env: map[string]string{"PMPH_GRACE_PERIOD": "50s", "PMPH_UPSTREAM": "http://127.0.0.1:9090/custom/metrics?x=1"},
			check: func(t *testing.T, c sidecar.Config) {
				if c.GracePeriod != 50*time.Second || c.Upstream.Path != "/custom/metrics" || c.Upstream.RawQuery != "x=1" {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "empty env counts as unset", env: map[string]string{"PMPH_LISTEN_ADDRESS": ""},
			check: func(t *testing.T, c sidecar.Config) {
				if c.ListenAddress != ":65532" {
					t.Errorf("listen address %q", c.ListenAddress)
				}
			}},
		{name: "upstream without path gets /", args: []string{"--upstream", "http://127.0.0.1:8080"},
			check: func(t *testing.T, c sidecar.Config) {
				if c.Upstream.Path != "/" {
					t.Errorf("path %q", c.Upstream.Path)
				}
			}},
		{name: "scrape interval, fetch interval and native mode from env as the webhook writes them",
			env: map[string]string{"PMPH_SCRAPE_INTERVAL": "15s", "PMPH_FINAL_FETCH_INTERVAL": "250ms", "PMPH_NATIVE_SIDECAR": "true"},
			check: func(t *testing.T, c sidecar.Config) {
				if c.ScrapeInterval != 15*time.Second || c.FinalFetchInterval != 250*time.Millisecond || !c.Native {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "zero scrape interval", args: []string{"--scrape-interval=0s"},
			wantErr: `--scrape-interval "0s" must be a positive duration such as 30s`},
		{name: "bad native flag", env: map[string]string{"PMPH_NATIVE_SIDECAR": "yes please"},
			wantErr: `PMPH_NATIVE_SIDECAR "yes please" must be true or false`},
		{name: "lease from env as the webhook writes it", env: leaseEnv(nil),
			check: func(t *testing.T, c sidecar.Config) {
				l := c.Lease
				if l == nil || l.URL != "https://pmph.pmph-system.svc:443" || string(l.CAPEM) != testCA || l.Size != 3 ||
					l.Lease.Namespace != "team-a" || l.Lease.Key != "batch" || l.Lease.Slot != 2 || l.Lease.Holder != testHolder || l.WithoutSlot {
					t.Errorf("lease %+v", l)
				}
			}},
		{name: "lease CA from a file", args: []string{"--lease-ca-file", "/ca.pem"}, env: leaseEnv(map[string]string{"PMPH_LEASE_CA": ""}),
			check: func(t *testing.T, c sidecar.Config) {
				if string(c.Lease.CAPEM) != testCA {
					t.Errorf("CA %q", c.Lease.CAPEM)
				}
			}},
		{name: "admitted without a slot gets a holder of its own",
			env: leaseEnv(map[string]string{"PMPH_LEASE_SLOT": "", "PMPH_LEASE_HOLDER": ""}),
			check: func(t *testing.T, c sidecar.Config) {
				if !c.Lease.WithoutSlot || len(c.Lease.Lease.Holder) != 32 || c.Lease.Lease.Holder == testHolder {
					t.Errorf("lease %+v", c.Lease)
				}
			}},
		{name: "admitted without a slot keeps the pod's holder",
			env: leaseEnv(map[string]string{"PMPH_LEASE_SLOT": ""}),
			check: func(t *testing.T, c sidecar.Config) {
				if !c.Lease.WithoutSlot || c.Lease.Lease.Holder != testHolder {
					t.Errorf("lease %+v", c.Lease)
				}
			}},
		{name: "lease URL alone means no lease", env: map[string]string{"PMPH_LEASE_URL": "https://x:1"},
			check: func(t *testing.T, c sidecar.Config) {
				if c.Lease != nil {
					t.Errorf("lease %+v", c.Lease)
				}
			}},

		{name: "bad duration", args: []string{"--upstream-timeout", "abc"},
			wantErr: `--upstream-timeout "abc" must be a Go duration such as 30s or 5m`},
		{name: "bad duration from env names the variable", env: map[string]string{"PMPH_GRACE_PERIOD": "30"},
			wantErr: `PMPH_GRACE_PERIOD "30" must be a Go duration such as 30s or 5m`},
		{name: "zero grace period", args: []string{"--grace-period=0s"},
			wantErr: `--grace-period "0s" must be a positive duration such as 30s`},
		{name: "negative fetch interval", args: []string{"--final-fetch-interval=-1s"},
			wantErr: `--final-fetch-interval "-1s" must be a positive duration such as 30s`},
		{name: "negative cache", env: map[string]string{"PMPH_CACHE_MAX_BYTES": "-1"},
			wantErr: `PMPH_CACHE_MAX_BYTES "-1" must be an integer from 0 to 1099511627776`},
		{name: "bad listen address", args: []string{"--listen-address=65532"},
			wantErr: `--listen-address "65532" must be host:port or :port`},
		{name: "bad port", args: []string{"--listen-address=:http"},
			wantErr: `--listen-address ":http" must have a port from 0 to 65535`},
		{name: "upstream not http", args: []string{"--upstream=127.0.0.1:8080/metrics"},
			wantErr: `--upstream "127.0.0.1:8080/metrics" must be an http:// URL with a host, such as http://127.0.0.1:8080/metrics`},
		{name: "bad log level", args: []string{"--log-level=trace"},
			wantErr: `--log-level "trace" must be one of debug, info, warn, error`},
		{name: "bad log format", env: map[string]string{"PMPH_LOG_FORMAT": "text"},
			wantErr: `PMPH_LOG_FORMAT "text" must be one of json, console`},
		{name: "unknown flag", args: []string{"--bogus"},
			wantErr: `unknown flag --bogus; run with --help for the list of flags`},
		{name: "argument", args: []string{"extra"},
			wantErr: `unexpected argument "extra"; the sidecar takes flags only`},
		{name: "key without URL", env: leaseEnv(map[string]string{"PMPH_LEASE_URL": ""}),
			wantErr: `PMPH_LEASE_KEY is set, so --lease-url (PMPH_LEASE_URL) is required too (the webhook sets both)`},
		{name: "lease URL not a URL", env: leaseEnv(map[string]string{"PMPH_LEASE_URL": "pmph:443"}),
			wantErr: `PMPH_LEASE_URL "pmph:443" must be an https:// URL with a host, such as https://pmph.pmph-system.svc:443`},
		{name: "CA not PEM", env: leaseEnv(map[string]string{"PMPH_LEASE_CA": "garbage"}),
			wantErr: `PMPH_LEASE_CA must hold a PEM certificate bundle`},
		{name: "CA file missing", args: []string{"--lease-ca-file=/nope"}, env: leaseEnv(nil),
			wantErr: `--lease-ca-file "/nope" cannot be read: file does not exist`},
		{name: "size out of range", env: leaseEnv(map[string]string{"PMPH_LEASE_SIZE": "0"}),
			wantErr: `PMPH_LEASE_SIZE "0" must be an integer from 1 to 1024`},
		{name: "bad namespace", env: leaseEnv(map[string]string{"PMPH_LEASE_NAMESPACE": "Team_A"}),
			wantErr: `PMPH_LEASE_NAMESPACE "Team_A" must be a namespace name (1 to 63 lowercase letters, digits or '-')`},
		{name: "bad key", env: leaseEnv(map[string]string{"PMPH_LEASE_KEY": "-x"}),
			wantErr: `PMPH_LEASE_KEY "-x" must be 1 to 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit`},
		{name: "slot beyond size", env: leaseEnv(map[string]string{"PMPH_LEASE_SLOT": "3"}),
			wantErr: `PMPH_LEASE_SLOT "3" must be an integer from 0 to 2`},
		{name: "bad holder", env: leaseEnv(map[string]string{"PMPH_LEASE_HOLDER": strings.ToUpper(testHolder)}),
			wantErr: `PMPH_LEASE_HOLDER "` + strings.ToUpper(testHolder) + `" must be 32 lowercase hex digits`},
		{name: "slot without holder", env: leaseEnv(map[string]string{"PMPH_LEASE_HOLDER": ""}),
			wantErr: `PMPH_LEASE_SLOT comes with --lease-holder (PMPH_LEASE_HOLDER) (the webhook sets both when it took a slot); --lease-holder (PMPH_LEASE_HOLDER) is missing`},
		{name: "bad holder without a slot", env: leaseEnv(map[string]string{"PMPH_LEASE_SLOT": "", "PMPH_LEASE_HOLDER": "x"}),
			wantErr: `PMPH_LEASE_HOLDER "x" must be 32 lowercase hex digits`},
		{name: "negative renew interval", env: leaseEnv(map[string]string{"PMPH_RENEW_INTERVAL": "-1s"}),
			wantErr: `PMPH_RENEW_INTERVAL "-1s" must not be negative`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parse(tt.args, tt.env)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error\n%v\nwant\n%s", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Error("the error is more than one line")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg)
		})
	}
}

func TestParseConfigHelp(t *testing.T) {
	var out strings.Builder
	_, err := sidecar.ParseConfig([]string{"--help"}, func(string) (string, bool) { return "", false }, nil, &out)
	if !errors.Is(err, sidecar.ErrHelp) {
		t.Fatalf("err %v, want ErrHelp", err)
	}
	for _, want := range []string{"--lease-holder", "PMPH_LEASE_HOLDER", "PMPH_LEASE_CA", "16777216"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}

func TestPlanTermination(t *testing.T) {
	tests := []struct {
		grace                time.Duration
		wantWait, wantWithin time.Duration
	}{
		// The webhook's grace period for a pod of its own 30 s and a 60 s
		// scrape interval: 30 + 60 + 10.
		{100 * time.Second, 95 * time.Second, 98 * time.Second},
		{30 * time.Second, 25 * time.Second, 28 * time.Second},
		{10 * time.Second, 8*time.Second - 8*time.Second/3, 8 * time.Second},
		{5 * time.Second, 4*time.Second - 4*time.Second/3, 4 * time.Second},
		{time.Second, 800*time.Millisecond - 800*time.Millisecond/3, 800 * time.Millisecond},
		{0, 0, 0},
	}
	for _, tt := range tests {
		got := sidecar.PlanTermination(tt.grace)
		if got.WaitUntil != tt.wantWait || got.ExitWithin != tt.wantWithin {
			t.Errorf("PlanTermination(%s) = wait until %s, exit within %s; want %s, %s",
				tt.grace, got.WaitUntil, got.ExitWithin, tt.wantWait, tt.wantWithin)
		}
	}
}
