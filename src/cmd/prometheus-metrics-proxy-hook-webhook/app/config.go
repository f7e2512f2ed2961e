package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// Config is the webhook process' configuration, from flags and environment
// variables (docs/configuration.md).
type Config struct {
	ListenAddress     string
	MetricsAddress    string
	ProbeAddress      string
	CertDir           string
	EnableHTTP2       bool
	RedisAddresses    []string
	RedisPassword     string // read from RedisPasswordFile; never logged
	RedisPasswordFile string
	RedisTimeout      time.Duration
	LeaseTTL          time.Duration
	// LeaseAPIAuth is LeaseAuthToken (every lease API call needs its pod's
	// token) or LeaseAuthDisabled (no checks: only without Kubernetes).
	LeaseAPIAuth       string
	LeaseTokenAudience string
	// LegacyHolderAuth accepts renewals and releases without a token for
	// leases granted before tokens were checked (the upgrade transition).
	LegacyHolderAuth bool
	NoQuorumPolicy   admission.NoQuorumPolicy
	Sidecar          admission.Sidecar
	ShutdownDelay    time.Duration
	ShutdownTimeout  time.Duration
	LogLevel         string
	LogFormat        string
	// Kubeconfig is the API server connection; empty means in-cluster.
	Kubeconfig              string
	ReconcileWindow         time.Duration
	ReconcileInterval       time.Duration
	LeaderElectionNamespace string
	LeaderElectionLeaseName string
}

// Values of --lease-api-auth.
const (
	LeaseAuthToken    = "token"
	LeaseAuthDisabled = "disabled"
)

// ConfigError is an invalid flag or environment variable: the process
// stops with its one-line message.
type ConfigError struct{ msg string }

func (e *ConfigError) Error() string { return e.msg }

// ErrHelp is returned by ParseConfig for -h and --help; the usage was
// written.
var ErrHelp = flag.ErrHelp

// envName turns --redis-timeout into PMPH_REDIS_TIMEOUT.
func envName(flagName string) string {
	return "PMPH_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ParseConfig reads args and, for every flag not given on the command line,
// its environment variable from getenv. Usage goes to usage on --help.
func ParseConfig(args []string, getenv func(string) string, usage io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := defineFlags(fs)
	if err := parseArgs(fs, args, usage); err != nil {
		return nil, err
	}
	src := fillFromEnv(fs, getenv)
	c := &Config{}
	for _, step := range []func(*Config, *flags, sources) error{
		parseListeners, parseRedis, parseLease, parseLeaseAuth, parseSidecar, parseShutdown, parseLogging, parseKube, readRedisPassword,
	} {
		if err := step(c, f, src); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// flags holds every flag's text; the parse steps check and convert it.
type flags struct {
	listen, metrics, probes, certDir, http2                                string
	redisAddrs, passwordFile, redisTimeout                                 string
	leaseTTL, leaseURL, noQuorum                                           string
	leaseAuth, audience, legacyAuth                                        string
	image, pullPolicy, sidecarPort, cpuReq, memReq, cpuLim, memLim, native string
	scrapeInterval, delay, shutdown, logLevel, logFormat                   string
	kube                                                                   kubeFlags
}

func defineFlags(fs *flag.FlagSet) *flags {
	f := &flags{}
	str := func(p *string, name, def, help string) { fs.StringVar(p, name, def, help) }
	boolean := func(p *string, name, def, help string) {
		*p = def
		fs.Var((*boolValue)(p), name, help)
	}
	str(&f.listen, "listen-address", ":9443", "TLS listener: /mutate and the lease API /v1/leases/*")
	str(&f.metrics, "metrics-address", ":8080", "/metrics (the webhook's own metrics)")
	str(&f.probes, "probe-address", ":8081", "/healthz, /readyz")
	str(&f.certDir, "cert-dir", "/tls", "directory holding tls.crt, tls.key and ca.crt; re-read when they change")
	boolean(&f.http2, "enable-http2", "false", "HTTP/2 on the TLS listener (off: CVE-2023-44487)")
	str(&f.redisAddrs, "redis-addresses", "", "comma-separated host:port of the M Redis nodes (odd M); required")
	str(&f.passwordFile, "redis-password-file", "", "file holding the Redis password")
	str(&f.redisTimeout, "redis-timeout", "50ms", "per-node dial/read/write timeout")
	str(&f.leaseTTL, "lease-ttl", "30s", "TTL of a running pod's lease; the sidecar renews every TTL/3")
	str(&f.leaseURL, "lease-url", "", "base URL the sidecar uses for the lease API; required")
	str(&f.leaseAuth, "lease-api-auth", LeaseAuthToken, "token: every lease API call must carry its pod's projected ServiceAccount token; disabled: no checks, for a webhook run without Kubernetes (tests, demos)")
	str(&f.audience, "lease-token-audience", admission.DefaultTokenAudience, "audience of the projected token injected into sidecars and required by the lease API")
	boolean(&f.legacyAuth, "lease-legacy-holder-auth", "true", "accept renewals and releases without a token for leases granted by a release before lease API tokens (no lease record); see docs/reliability.md")
	str(&f.noQuorum, "no-quorum-policy", "deny", "deny or allow when Redis has no quorum")
	str(&f.image, "sidecar-image", "", "image of the injected sidecar; required")
	str(&f.pullPolicy, "sidecar-image-pull-policy", "IfNotPresent", "Always, IfNotPresent or Never")
	str(&f.sidecarPort, "sidecar-port", "65532", "port of the injected metrics proxy")
	str(&f.cpuReq, "sidecar-cpu-request", "10m", "CPU request of the sidecar (empty: none)")
	str(&f.memReq, "sidecar-memory-request", "16Mi", "memory request of the sidecar (empty: none)")
	str(&f.cpuLim, "sidecar-cpu-limit", "", "CPU limit of the sidecar (empty: none)")
	str(&f.memLim, "sidecar-memory-limit", "32Mi", "memory limit of the sidecar (empty: none)")
	boolean(&f.native, "native-sidecar", "true", "inject a native sidecar (first init container, restartPolicy Always), which the kubelet stops only after the app containers exited; false: a regular container, signalled together with them")
	str(&f.scrapeInterval, "scrape-interval", "60s", "the longest scrape interval of the Prometheus servers that scrape opted-in pods (pod annotation scrape-interval overrides it); a terminating sidecar waits up to this plus 5s after the app stopped, and the pod's grace period grows by this plus 10s")
	str(&f.delay, "shutdown-delay", "5s", "after SIGTERM, keep serving this long with readiness failing before closing the listeners")
	str(&f.shutdown, "shutdown-timeout", "20s", "bound on finishing in-flight requests after SIGTERM")
	str(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	str(&f.logFormat, "log-format", "json", "json or console")
	defineKubeFlags(fs, &f.kube)
	return f
}

func parseArgs(fs *flag.FlagSet, args []string, usage io.Writer) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, usage)
			return ErrHelp
		}
		return &ConfigError{msg: strings.TrimSuffix(err.Error(), "\n") + "; run with --help for the list of flags"}
	}
	if fs.NArg() > 0 {
		return &ConfigError{msg: fmt.Sprintf("unexpected argument %q; every setting is a --flag", fs.Arg(0))}
	}
	return nil
}

// sources names where each flag's value came from (the flag or its
// environment variable), for the error message.
type sources map[string]string

// fillFromEnv sets every flag not given on the command line from its
// environment variable, when that is set and not empty.
func fillFromEnv(fs *flag.FlagSet, getenv func(string) string) sources {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	src := sources{}
	fs.VisitAll(func(f *flag.Flag) {
		src[f.Name] = "--" + f.Name
		if given[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			_ = f.Value.Set(v)
			src[f.Name] = envName(f.Name)
		}
	})
	return src
}

// invalid answers the error for a value that breaks rule.
func (s sources) invalid(name, value, rule string) error {
	return &ConfigError{msg: fmt.Sprintf("invalid %s %q: %s", s[name], value, rule)}
}

// missing answers the error for a required flag left empty; hint says
// what to set it to.
func missing(name, hint string) error {
	return &ConfigError{msg: fmt.Sprintf("missing --%s (or %s): %s", name, envName(name), hint)}
}

func parseListeners(c *Config, f *flags, src sources) error {
	c.ListenAddress, c.MetricsAddress, c.ProbeAddress, c.CertDir = f.listen, f.metrics, f.probes, f.certDir
	for _, a := range []struct{ name, value string }{{"listen-address", f.listen}, {"metrics-address", f.metrics}, {"probe-address", f.probes}} {
		if _, port, err := net.SplitHostPort(a.value); err != nil || !validPort(port, true) {
			return src.invalid(a.name, a.value, "must be host:port or :port with a port from 0 to 65535")
		}
	}
	if f.certDir == "" {
		return src.invalid("cert-dir", f.certDir, "must name the directory holding tls.crt, tls.key and ca.crt")
	}
	var err error
	if c.EnableHTTP2, err = strconv.ParseBool(f.http2); err != nil {
		return src.invalid("enable-http2", f.http2, "must be true or false")
	}
	return nil
}

func parseRedis(c *Config, f *flags, src sources) error {
	if strings.TrimSpace(f.redisAddrs) == "" {
		return missing("redis-addresses", "set it to the comma-separated host:port of the Redis nodes")
	}
	for _, a := range strings.Split(f.redisAddrs, ",") {
		a = strings.TrimSpace(a)
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || !validPort(port, false) {
			return src.invalid("redis-addresses", f.redisAddrs, fmt.Sprintf("%q must be host:port", a))
		}
		for _, seen := range c.RedisAddresses {
			if seen == a {
				return src.invalid("redis-addresses", f.redisAddrs, fmt.Sprintf("%q is listed twice; every node must be independent", a))
			}
		}
		c.RedisAddresses = append(c.RedisAddresses, a)
	}
	if len(c.RedisAddresses)%2 == 0 {
		return src.invalid("redis-addresses", f.redisAddrs, fmt.Sprintf("must list an odd number of nodes (got %d) so that a quorum survives the loss of a minority", len(c.RedisAddresses)))
	}
	var err error
	if c.RedisTimeout, err = duration(f.redisTimeout, time.Millisecond, 10*time.Second); err != nil {
		return src.invalid("redis-timeout", f.redisTimeout, err.Error())
	}
	c.RedisPasswordFile = f.passwordFile
	return nil
}

func parseLease(c *Config, f *flags, src sources) error {
	var err error
	if c.LeaseTTL, err = duration(f.leaseTTL, semaphore.MinTTL*10, 24*time.Hour); err != nil {
		return src.invalid("lease-ttl", f.leaseTTL, err.Error())
	}
	if f.leaseURL == "" {
		return missing("lease-url", "set it to the lease API base URL the sidecars use, e.g. https://pmph.pmph-system.svc:443")
	}
	if u, err := url.Parse(f.leaseURL); err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return src.invalid("lease-url", f.leaseURL, "must be an https:// URL with a host, e.g. https://pmph.pmph-system.svc:443")
	}
	c.NoQuorumPolicy = admission.NoQuorumPolicy(f.noQuorum)
	switch c.NoQuorumPolicy {
	case admission.NoQuorumDeny, admission.NoQuorumAllow:
	default:
		return src.invalid("no-quorum-policy", f.noQuorum, "must be deny or allow")
	}
	return nil
}

// parseLeaseAuth reads how the lease API tells the pod that calls it.
func parseLeaseAuth(c *Config, f *flags, src sources) error {
	c.LeaseAPIAuth, c.LeaseTokenAudience = f.leaseAuth, f.audience
	switch c.LeaseAPIAuth {
	case LeaseAuthToken, LeaseAuthDisabled:
	default:
		return src.invalid("lease-api-auth", f.leaseAuth, "must be token or disabled")
	}
	if c.LeaseTokenAudience == "" || strings.ContainsAny(c.LeaseTokenAudience, " \t\n,") {
		return src.invalid("lease-token-audience", f.audience, "must be one audience, without spaces or commas")
	}
	var err error
	if c.LegacyHolderAuth, err = strconv.ParseBool(f.legacyAuth); err != nil {
		return src.invalid("lease-legacy-holder-auth", f.legacyAuth, "must be true or false")
	}
	return nil
}

// parseSidecar describes the injected container; the lease URL was
// checked by parseLease.
func parseSidecar(c *Config, f *flags, src sources) error {
	native, err := strconv.ParseBool(f.native)
	if err != nil {
		return src.invalid("native-sidecar", f.native, "must be true or false")
	}
	if f.image == "" {
		return missing("sidecar-image", "set it to the image of the injected sidecar (this image)")
	}
	if strings.ContainsAny(f.image, " \t\n") {
		return src.invalid("sidecar-image", f.image, "must be an image reference without spaces, e.g. ghcr.io/kaidotio/prometheus-metrics-proxy-hook:v0.1.0")
	}
	pullPolicies := []corev1.PullPolicy{corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever}
	if !slices.Contains(pullPolicies, corev1.PullPolicy(f.pullPolicy)) {
		return src.invalid("sidecar-image-pull-policy", f.pullPolicy, "must be Always, IfNotPresent or Never")
	}
	port, err := strconv.Atoi(f.sidecarPort)
	if err != nil || len(validation.IsValidPortNum(port)) != 0 {
		return src.invalid("sidecar-port", f.sidecarPort, "must be a port number from 1 to 65535")
	}
	scrapeInterval, err := duration(f.scrapeInterval, admission.MinScrapeInterval, admission.MaxScrapeInterval)
	if err != nil {
		return src.invalid("scrape-interval", f.scrapeInterval, err.Error())
	}
	c.Sidecar = admission.Sidecar{
		Image: f.image, PullPolicy: corev1.PullPolicy(f.pullPolicy), Command: []string{admission.SidecarCommand},
		Port: int32(port), Native: native,
		ScrapeInterval: scrapeInterval, LeaseURL: strings.TrimSuffix(f.leaseURL, "/"),
		LeaseTokenAudience: c.LeaseTokenAudience,
	}
	return parseSidecarResources(&c.Sidecar, f, src)
}

func parseSidecarResources(s *admission.Sidecar, f *flags, src sources) error {
	for _, q := range []struct {
		name, in string
		list     *corev1.ResourceList
		resource corev1.ResourceName
	}{
		{"sidecar-cpu-request", f.cpuReq, &s.Resources.Requests, corev1.ResourceCPU},
		{"sidecar-memory-request", f.memReq, &s.Resources.Requests, corev1.ResourceMemory},
		{"sidecar-cpu-limit", f.cpuLim, &s.Resources.Limits, corev1.ResourceCPU},
		{"sidecar-memory-limit", f.memLim, &s.Resources.Limits, corev1.ResourceMemory},
	} {
		if q.in == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.in)
		if err != nil || v.Sign() <= 0 {
			return src.invalid(q.name, q.in, "must be a positive Kubernetes quantity such as 10m, 16Mi or 0.5, or empty for none")
		}
		if *q.list == nil {
			*q.list = corev1.ResourceList{}
		}
		(*q.list)[q.resource] = v
	}
	return nil
}

func parseShutdown(c *Config, f *flags, src sources) error {
	var err error
	if c.ShutdownDelay, err = duration(f.delay, 0, time.Minute); err != nil {
		return src.invalid("shutdown-delay", f.delay, err.Error())
	}
	if c.ShutdownTimeout, err = duration(f.shutdown, 0, time.Hour); err != nil {
		return src.invalid("shutdown-timeout", f.shutdown, err.Error())
	}
	return nil
}

func parseLogging(c *Config, f *flags, src sources) error {
	c.LogLevel, c.LogFormat = f.logLevel, f.logFormat
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return src.invalid("log-level", c.LogLevel, "must be debug, info, warn or error")
	}
	switch c.LogFormat {
	case "json", "console":
	default:
		return src.invalid("log-format", c.LogFormat, "must be json or console")
	}
	return nil
}

// readRedisPassword reads the password file; the error names the file,
// never its content.
func readRedisPassword(c *Config, _ *flags, src sources) error {
	if c.RedisPasswordFile == "" {
		return nil
	}
	b, err := os.ReadFile(c.RedisPasswordFile)
	if err != nil {
		return src.invalid("redis-password-file", c.RedisPasswordFile, fmt.Sprintf("cannot be read: %v", errors.Unwrap(err)))
	}
	c.RedisPassword = strings.TrimRight(string(b), "\r\n")
	if c.RedisPassword == "" {
		return src.invalid("redis-password-file", c.RedisPasswordFile, "is empty; it must hold the Redis password")
	}
	return nil
}

func validPort(s string, zeroOK bool) bool {
	n, err := strconv.Atoi(s)
	if err != nil {
		return false
	}
	return len(validation.IsValidPortNum(n)) == 0 || (zeroOK && n == 0)
}

func duration(s string, lo, hi time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d < lo || d > hi {
		return 0, fmt.Errorf("must be a Go duration from %s to %s", short(lo), short(hi))
	}
	return d, nil
}

func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintln(w, "Usage: prometheus-metrics-proxy-hook-webhook [flags]")
	fmt.Fprintln(w, "       prometheus-metrics-proxy-hook-webhook version")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every flag has an environment variable; the flag wins when both are set.")
	fmt.Fprintln(w)
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if def == "" {
			def = "none"
		}
		fmt.Fprintf(w, "  --%s (%s, default %s)\n      %s\n", f.Name, envName(f.Name), def, f.Usage)
	})
}

// short prints 1h rather than Go's 1h0m0s.
func short(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return d.String()
}

// boolValue is a boolean flag (--enable-http2 alone means true) kept as
// text, so that a bad value from the environment is reported like any
// other.
type boolValue string

func (b *boolValue) String() string     { return string(*b) }
func (b *boolValue) Set(s string) error { *b = boolValue(s); return nil }
func (b *boolValue) IsBoolFlag() bool   { return true }
