package sidecar

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// Config is the sidecar's checked configuration.
type Config struct {
	ListenAddress   string
	Upstream        *url.URL
	UpstreamTimeout time.Duration
	CacheMaxBytes   int64
	GracePeriod     time.Duration
	// ScrapeInterval is the longest scrape interval of the Prometheus
	// servers that scrape the pod: after the app stopped, the sidecar
	// waits up to this plus FinalScrapeMargin for their final scrapes.
	ScrapeInterval time.Duration
	// FinalFetchInterval paces the fetches of the app's metrics from the
	// start of the termination until the app stops answering.
	FinalFetchInterval time.Duration
	// Native is set when the sidecar runs as a native sidecar: the app
	// starts only after its startup probe passed, and has exited when the
	// sidecar gets its signal.
	Native bool
	// Lease is nil when the pod has no semaphore.
	Lease     *LeaseConfig
	LogLevel  zerolog.Level
	LogFormat string
}

// LeaseConfig is the pod's semaphore lease and how to reach the lease API.
type LeaseConfig struct {
	URL string
	// CAPEM is the CA bundle the lease API's certificate is checked
	// against; empty means the system's roots.
	CAPEM []byte
	Lease leaseapi.Lease
	Size  int
	// WithoutSlot is set when the webhook admitted the pod without a slot
	// (no Redis quorum, and its policy allows that): the sidecar takes one
	// itself with a holder id of its own.
	WithoutSlot   bool
	RenewInterval time.Duration
	// TokenFile holds the pod's projected ServiceAccount token for the
	// lease API; empty sends none (a lease API without token checks).
	TokenFile string
}

// setting is one flag with its environment variable and default.
type setting struct {
	flag, env, def, help string
}

func settings() []setting {
	return []setting{
		{"listen-address", "PMPH_LISTEN_ADDRESS", ":65532", "the proxy Prometheus scrapes"},
		{"upstream", "PMPH_UPSTREAM", "http://127.0.0.1:8080/metrics", "the app's metrics endpoint; its path is the metrics path"},
		{"upstream-timeout", "PMPH_UPSTREAM_TIMEOUT", "8s", "bound on one request to the app (a lower Prometheus scrape timeout lowers it)"},
		{"cache-max-bytes", "PMPH_CACHE_MAX_BYTES", "16777216", "cap of the last good bodies kept for the final scrape"},
		{"grace-period", "PMPH_GRACE_PERIOD", "30s", "the pod's terminationGracePeriodSeconds"},
		{"scrape-interval", "PMPH_SCRAPE_INTERVAL", "60s", "the longest scrape interval of the pod's Prometheus servers; after the app stopped the sidecar waits up to this plus 5s for their final scrapes"},
		{"final-fetch-interval", "PMPH_FINAL_FETCH_INTERVAL", "500ms", "time between fetches of the app's metrics from the start of the termination until the app stops answering"},
		{"native-sidecar", "PMPH_NATIVE_SIDECAR", "false", "true when injected as a native sidecar (the app starts after the startup probe passed and stops before the sidecar)"},
		{"lease-url", "PMPH_LEASE_URL", "", "the webhook's lease API base URL"},
		{"lease-ca-file", "PMPH_LEASE_CA_FILE", "", "CA bundle file for the lease API (PMPH_LEASE_CA holds it inline)"},
		{"lease-namespace", "PMPH_LEASE_NAMESPACE", "", "semaphore namespace (the pod's)"},
		{"lease-key", "PMPH_LEASE_KEY", "", "semaphore key; without it the sidecar keeps no lease"},
		{"lease-size", "PMPH_LEASE_SIZE", "", "semaphore size, used to take a slot again when the lease was lost"},
		{"lease-slot", "PMPH_LEASE_SLOT", "", "slot index"},
		{"lease-holder", "PMPH_LEASE_HOLDER", "", "holder id (32 hex digits)"},
		{"lease-token-file", "PMPH_LEASE_TOKEN_FILE", "", "the pod's projected ServiceAccount token for the lease API, read on every call"},
		{"renew-interval", "PMPH_RENEW_INTERVAL", "0", "time between renewals; 0 means a third of the lease TTL"},
		{"log-level", "PMPH_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"log-format", "PMPH_LOG_FORMAT", "json", "json or console"},
	}
}

// caEnv holds the CA bundle inline; it has no flag, since a PEM bundle does
// not belong on a command line.
const caEnv = "PMPH_LEASE_CA"

// ErrHelp is returned by ParseConfig for -h and --help, after the usage was
// written.
var ErrHelp = flag.ErrHelp

// ParseConfig reads the flags in args and, for each flag not given, its
// environment variable through lookupEnv (an empty value counts as unset),
// then checks every value. readFile reads --lease-ca-file. The error is one
// line naming the flag or variable, the value and the rule.
func ParseConfig(args []string, lookupEnv func(string) (string, bool), readFile func(string) ([]byte, error), usage io.Writer) (Config, error) {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	raw := map[string]*string{}
	for _, s := range settings() {
		raw[s.flag] = fs.String(s.flag, s.def, s.help)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeUsage(usage)
			return Config{}, ErrHelp
		}
		msg := err.Error()
		if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
			msg = "unknown flag --" + strings.TrimPrefix(name, "-")
		}
		return Config{}, fmt.Errorf("%s; run with --help for the list of flags", msg)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q; the sidecar takes flags only", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	v := values{}
	for _, s := range settings() {
		switch {
		case given[s.flag]:
			v[s.flag] = value{raw: *raw[s.flag], name: "--" + s.flag, set: true}
		default:
			if e, ok := lookupEnv(s.env); ok && e != "" {
				v[s.flag] = value{raw: e, name: s.env, set: true}
			} else {
				v[s.flag] = value{raw: s.def, name: "--" + s.flag + " (" + s.env + ")"}
			}
		}
	}

	var cfg Config
	var err error
	if cfg.ListenAddress, err = v.listenAddress("listen-address"); err != nil {
		return Config{}, err
	}
	if cfg.Upstream, err = v.upstream("upstream"); err != nil {
		return Config{}, err
	}
	if cfg.UpstreamTimeout, err = v.duration("upstream-timeout", false); err != nil {
		return Config{}, err
	}
	if cfg.CacheMaxBytes, err = v.int64("cache-max-bytes", 0, 1<<40); err != nil {
		return Config{}, err
	}
	if cfg.GracePeriod, err = v.duration("grace-period", false); err != nil {
		return Config{}, err
	}
	if cfg.ScrapeInterval, err = v.duration("scrape-interval", false); err != nil {
		return Config{}, err
	}
	if cfg.FinalFetchInterval, err = v.duration("final-fetch-interval", false); err != nil {
		return Config{}, err
	}
	if cfg.Native, err = v.boolean("native-sidecar"); err != nil {
		return Config{}, err
	}
	if cfg.LogLevel, err = v.logLevel("log-level"); err != nil {
		return Config{}, err
	}
	if cfg.LogFormat, err = v.oneOf("log-format", "json", "console"); err != nil {
		return Config{}, err
	}
	caPEM, _ := lookupEnv(caEnv)
	if cfg.Lease, err = v.lease(caPEM, readFile); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func writeUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: prometheus-metrics-proxy-hook-sidecar [flags]")
	fmt.Fprintln(w, "       prometheus-metrics-proxy-hook-sidecar version")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every flag has an environment variable; the flag wins when both are set.")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  flag\tenvironment\tdefault\tmeaning")
	for _, s := range settings() {
		def := s.def
		if def == "" {
			def = "(none)"
		}
		fmt.Fprintf(tw, "  --%s\t%s\t%s\t%s\n", s.flag, s.env, def, s.help)
	}
	fmt.Fprintf(tw, "  \t%s\t(none)\tCA bundle PEM inline (what the webhook injects)\n", caEnv)
	_ = tw.Flush()
}

// value is one setting's text and where it came from, for error messages.
type value struct {
	raw  string
	name string // "--flag" or "ENV_VAR"
	set  bool
}

type values map[string]value

func (v value) errorf(rule string, args ...any) error {
	return fmt.Errorf("%s %q %s", v.name, v.raw, fmt.Sprintf(rule, args...))
}

func (vs values) duration(key string, zeroOK bool) (time.Duration, error) {
	v := vs[key]
	d, err := time.ParseDuration(v.raw)
	switch {
	case err != nil:
		return 0, v.errorf("must be a Go duration such as 30s or 5m")
	case d < 0, d == 0 && !zeroOK:
		if zeroOK {
			return 0, v.errorf("must not be negative")
		}
		return 0, v.errorf("must be a positive duration such as 30s")
	}
	return d, nil
}

func (vs values) boolean(key string) (bool, error) {
	v := vs[key]
	b, err := strconv.ParseBool(v.raw)
	if err != nil {
		return false, v.errorf("must be true or false")
	}
	return b, nil
}

func (vs values) int64(key string, lo, hi int64) (int64, error) {
	v := vs[key]
	n, err := strconv.ParseInt(v.raw, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, v.errorf("must be an integer from %d to %d", lo, hi)
	}
	return n, nil
}

func (vs values) oneOf(key string, allowed ...string) (string, error) {
	v := vs[key]
	for _, a := range allowed {
		if v.raw == a {
			return a, nil
		}
	}
	return "", v.errorf("must be one of %s", strings.Join(allowed, ", "))
}

func (vs values) logLevel(key string) (zerolog.Level, error) {
	s, err := vs.oneOf(key, "debug", "info", "warn", "error")
	if err != nil {
		return 0, err
	}
	l, _ := zerolog.ParseLevel(s)
	return l, nil
}

func (vs values) listenAddress(key string) (string, error) {
	v := vs[key]
	_, port, err := net.SplitHostPort(v.raw)
	if err != nil {
		return "", v.errorf("must be host:port or :port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", v.errorf("must have a port from 0 to 65535")
	}
	return v.raw, nil
}

func (vs values) upstream(key string) (*url.URL, error) {
	v := vs[key]
	u, err := url.Parse(v.raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" {
		return nil, v.errorf("must be an http:// URL with a host, such as http://127.0.0.1:8080/metrics")
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return u, nil
}

func (vs values) lease(caPEM string, readFile func(string) ([]byte, error)) (*LeaseConfig, error) {
	key := vs["lease-key"]
	if !key.set {
		// No semaphore: a hand-run sidecar, or a pod without one. The
		// other lease settings mean nothing then.
		return nil, nil
	}
	lc := &LeaseConfig{}
	for _, k := range []string{"lease-url", "lease-namespace", "lease-size"} {
		if !vs[k].set {
			return nil, fmt.Errorf("%s is set, so %s is required too (the webhook sets both)", key.name, vs[k].name)
		}
	}
	u, err := url.Parse(vs["lease-url"].raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, vs["lease-url"].errorf("must be an https:// URL with a host, such as https://pmph.pmph-system.svc:443")
	}
	lc.URL = vs["lease-url"].raw
	lc.TokenFile = vs["lease-token-file"].raw

	switch caFile := vs["lease-ca-file"]; {
	case caFile.set:
		pem, err := readFile(caFile.raw)
		if err != nil {
			return nil, caFile.errorf("cannot be read: %v", err)
		}
		lc.CAPEM = pem
	case caPEM != "":
		lc.CAPEM = []byte(caPEM)
	}
	if len(lc.CAPEM) > 0 && !strings.Contains(string(lc.CAPEM), "-----BEGIN CERTIFICATE-----") {
		name := caEnv
		if vs["lease-ca-file"].set {
			name = vs["lease-ca-file"].name + " " + strconv.Quote(vs["lease-ca-file"].raw)
		}
		return nil, fmt.Errorf("%s must hold a PEM certificate bundle", name)
	}

	size, err := vs.int64("lease-size", 1, 1024)
	if err != nil {
		return nil, err
	}
	lc.Size = int(size)
	ns := vs["lease-namespace"]
	probe := leaseapi.Lease{Namespace: ns.raw, Key: "k", Holder: strings.Repeat("0", 32)}
	if probe.Validate() != nil {
		return nil, ns.errorf("must be a namespace name (1 to 63 lowercase letters, digits or '-')")
	}
	if err := leaseapi.ValidateKey(key.raw); err != nil {
		return nil, key.errorf("%v", err)
	}
	lc.Lease = leaseapi.Lease{Namespace: ns.raw, Key: key.raw}

	slot, holder := vs["lease-slot"], vs["lease-holder"]
	switch {
	case slot.set && !holder.set:
		return nil, fmt.Errorf("%s comes with %s (the webhook sets both when it took a slot); %s is missing", slot.name, holder.name, holder.name)
	case !slot.set:
		// Admitted without a slot (no quorum under the allow policy): the
		// sidecar takes one under the holder id the pod carries, which is
		// how the lease API knows the lease is this pod's.
		lc.WithoutSlot = true
		lc.Lease.Holder = holder.raw
		if !holder.set {
			lc.Lease.Holder = newHolderID()
		} else if !validHolder(holder.raw) {
			return nil, holder.errorf("must be 32 lowercase hex digits")
		}
	default:
		n, err := vs.int64("lease-slot", 0, size-1)
		if err != nil {
			return nil, err
		}
		lc.Lease.Slot = int(n)
		lc.Lease.Holder = holder.raw
		if !validHolder(holder.raw) {
			return nil, holder.errorf("must be 32 lowercase hex digits")
		}
	}
	if lc.RenewInterval, err = vs.duration("renew-interval", true); err != nil {
		return nil, err
	}
	return lc, nil
}

func validHolder(s string) bool {
	if len(s) != 32 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// newHolderID is a random 128-bit holder id, for a sidecar started without
// one (by hand, or by a webhook that predates holders on every path).
// crypto/rand.Read never fails: it crashes the program instead.
func newHolderID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
