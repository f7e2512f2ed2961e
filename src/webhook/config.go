package webhook

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

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
	NoQuorumPolicy    admission.NoQuorumPolicy
	Sidecar           admission.Sidecar
	ShutdownDelay     time.Duration
	ShutdownTimeout   time.Duration
	LogLevel          string
	LogFormat         string
	// Kubeconfig is empty for the in-cluster configuration.
	Kubeconfig              string
	ReconcileWindow         time.Duration
	ReconcileInterval       time.Duration
	LeaderElectionNamespace string
	LeaderElectionLeaseName string
}

// ConfigError is an invalid flag or environment variable: the process
// stops with its one-line message.
type ConfigError struct{ msg string }

func (e *ConfigError) Error() string { return e.msg }

// ErrHelp is returned by ParseConfig for -h and --help; the usage was
// written.
var ErrHelp = flag.ErrHelp

// envPrefix turns --redis-timeout into PMPH_REDIS_TIMEOUT.
func envName(flagName string) string {
	return "PMPH_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ParseConfig reads args and, for every flag not given on the command line,
// its environment variable from getenv. Usage goes to usage on --help.
func ParseConfig(args []string, getenv func(string) string, usage io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	str := func(name, def, help string) *string { return fs.String(name, def, help) }
	boolean := func(name, help string) *string {
		v := boolValue("false")
		fs.Var(&v, name, help)
		return (*string)(&v)
	}
	var (
		listen       = str("listen-address", ":9443", "TLS listener: /mutate and the lease API /v1/leases/*")
		metrics      = str("metrics-address", ":8080", "/metrics (the webhook's own metrics)")
		probes       = str("probe-address", ":8081", "/healthz, /readyz")
		certDir      = str("cert-dir", "/tls", "directory holding tls.crt, tls.key and ca.crt; re-read when they change")
		http2        = boolean("enable-http2", "HTTP/2 on the TLS listener (off: CVE-2023-44487)")
		redisAddrs   = str("redis-addresses", "", "comma-separated host:port of the M Redis nodes (odd M); required")
		passwordFile = str("redis-password-file", "", "file holding the Redis password")
		redisTimeout = str("redis-timeout", "50ms", "per-node dial/read/write timeout")
		leaseTTL     = str("lease-ttl", "30s", "TTL of a running pod's lease; the sidecar renews every TTL/3")
		leaseURL     = str("lease-url", "", "base URL the sidecar uses for the lease API; required")
		noQuorum     = str("no-quorum-policy", "deny", "deny or allow when Redis has no quorum")
		image        = str("sidecar-image", "", "image of the injected sidecar; required")
		pullPolicy   = str("sidecar-image-pull-policy", "IfNotPresent", "Always, IfNotPresent or Never")
		sidecarPort  = str("sidecar-port", "65532", "port of the injected metrics proxy")
		cpuReq       = str("sidecar-cpu-request", "10m", "CPU request of the sidecar (empty: none)")
		memReq       = str("sidecar-memory-request", "16Mi", "memory request of the sidecar (empty: none)")
		cpuLim       = str("sidecar-cpu-limit", "", "CPU limit of the sidecar (empty: none)")
		memLim       = str("sidecar-memory-limit", "32Mi", "memory limit of the sidecar (empty: none)")
		native       = boolean("native-sidecar", "inject into initContainers with restartPolicy Always")
		finalWait    = str("final-scrape-wait", "40s", "how long a terminating sidecar waits for one more scrape")
		delay        = str("shutdown-delay", "5s", "after SIGTERM, keep serving this long with readiness failing before closing the listeners")
		shutdown     = str("shutdown-timeout", "20s", "bound on finishing in-flight requests after SIGTERM")
		logLevel     = str("log-level", "info", "debug, info, warn or error")
		logFormat    = str("log-format", "json", "json or console")
		kubeconfig   = str("kubeconfig", "", "kubeconfig file for the API server (empty: the in-cluster service account)")
		window       = str("reconcile-window", "90s", "how long after its admission a slot may go without a pod before the reconciler releases it; keep it above the API server's request timeout")
		interval     = str("reconcile-interval", "15s", "time between two comparisons of the leases with the pods")
		electionNS   = str("leader-election-namespace", "", "namespace of the reconciler's coordination.k8s.io Lease (empty: POD_NAMESPACE, else the service account's)")
		electionName = str("leader-election-lease-name", "prometheus-metrics-proxy-hook-reconciler", "name of the reconciler's coordination.k8s.io Lease")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, usage)
			return nil, ErrHelp
		}
		return nil, &ConfigError{msg: strings.TrimSuffix(err.Error(), "\n") + "; run with --help for the list of flags"}
	}
	if fs.NArg() > 0 {
		return nil, &ConfigError{msg: fmt.Sprintf("unexpected argument %q; every setting is a --flag", fs.Arg(0))}
	}
	// source names where a value came from, for the error message.
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	source := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		source[f.Name] = "--" + f.Name
		if given[f.Name] {
			return
		}
		if v, ok := lookup(getenv, envName(f.Name)); ok {
			_ = f.Value.Set(v)
			source[f.Name] = envName(f.Name)
		}
	})
	bad := func(name, value, rule string) error {
		if value == "" && strings.HasPrefix(rule, "is required") {
			return &ConfigError{msg: fmt.Sprintf("missing --%s (or %s): %s", name, envName(name), strings.TrimPrefix(rule, "is required: "))}
		}
		return &ConfigError{msg: fmt.Sprintf("invalid %s %q: %s", source[name], value, rule)}
	}

	c := &Config{
		ListenAddress: *listen, MetricsAddress: *metrics, ProbeAddress: *probes,
		CertDir: *certDir, RedisPasswordFile: *passwordFile, LogLevel: *logLevel, LogFormat: *logFormat,
		NoQuorumPolicy: admission.NoQuorumPolicy(*noQuorum),
		Kubeconfig:     *kubeconfig, LeaderElectionNamespace: *electionNS, LeaderElectionLeaseName: *electionName,
	}
	for _, a := range []struct{ name, value string }{{"listen-address", *listen}, {"metrics-address", *metrics}, {"probe-address", *probes}} {
		if _, port, err := net.SplitHostPort(a.value); err != nil || !validPort(port, true) {
			return nil, bad(a.name, a.value, "must be host:port or :port with a port from 0 to 65535")
		}
	}
	if *certDir == "" {
		return nil, bad("cert-dir", *certDir, "must name the directory holding tls.crt, tls.key and ca.crt")
	}
	var err error
	if c.EnableHTTP2, err = strconv.ParseBool(*http2); err != nil {
		return nil, bad("enable-http2", *http2, "must be true or false")
	}
	if c.Sidecar.Native, err = strconv.ParseBool(*native); err != nil {
		return nil, bad("native-sidecar", *native, "must be true or false")
	}
	if strings.TrimSpace(*redisAddrs) == "" {
		return nil, bad("redis-addresses", *redisAddrs, "is required: set it to the comma-separated host:port of the Redis nodes")
	}
	for _, a := range strings.Split(*redisAddrs, ",") {
		a = strings.TrimSpace(a)
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || !validPort(port, false) {
			return nil, bad("redis-addresses", *redisAddrs, fmt.Sprintf("%q must be host:port", a))
		}
		for _, seen := range c.RedisAddresses {
			if seen == a {
				return nil, bad("redis-addresses", *redisAddrs, fmt.Sprintf("%q is listed twice; every node must be independent", a))
			}
		}
		c.RedisAddresses = append(c.RedisAddresses, a)
	}
	if len(c.RedisAddresses)%2 == 0 {
		return nil, bad("redis-addresses", *redisAddrs, fmt.Sprintf("must list an odd number of nodes (got %d) so that a quorum survives the loss of a minority", len(c.RedisAddresses)))
	}
	if c.RedisTimeout, err = duration(*redisTimeout, time.Millisecond, 10*time.Second); err != nil {
		return nil, bad("redis-timeout", *redisTimeout, err.Error())
	}
	if c.LeaseTTL, err = duration(*leaseTTL, semaphore.MinTTL*10, 24*time.Hour); err != nil {
		return nil, bad("lease-ttl", *leaseTTL, err.Error())
	}
	if *leaseURL == "" {
		return nil, bad("lease-url", "", "is required: set it to the lease API base URL the sidecars use, e.g. https://pmph.pmph-system.svc:443")
	}
	if u, err := url.Parse(*leaseURL); err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, bad("lease-url", *leaseURL, "must be an https:// URL with a host, e.g. https://pmph.pmph-system.svc:443")
	}
	switch c.NoQuorumPolicy {
	case admission.NoQuorumDeny, admission.NoQuorumAllow:
	default:
		return nil, bad("no-quorum-policy", *noQuorum, "must be deny or allow")
	}
	if *image == "" || strings.ContainsAny(*image, " \t\n") {
		return nil, bad("sidecar-image", *image, "is required: set it to the image of the injected sidecar (this image)")
	}
	switch *pullPolicy {
	case "Always", "IfNotPresent", "Never":
	default:
		return nil, bad("sidecar-image-pull-policy", *pullPolicy, "must be Always, IfNotPresent or Never")
	}
	port, err := strconv.Atoi(*sidecarPort)
	if err != nil || port < 1 || port > 65535 {
		return nil, bad("sidecar-port", *sidecarPort, "must be a port number from 1 to 65535")
	}
	finalScrapeWait, err := duration(*finalWait, 0, time.Hour)
	if err != nil {
		return nil, bad("final-scrape-wait", *finalWait, err.Error())
	}
	c.Sidecar = admission.Sidecar{
		Image: *image, PullPolicy: *pullPolicy, Port: int32(port), Native: c.Sidecar.Native,
		FinalScrapeWait: finalScrapeWait, LeaseURL: strings.TrimSuffix(*leaseURL, "/"),
	}
	for _, q := range []struct {
		name string
		in   string
		out  *string
	}{
		{"sidecar-cpu-request", *cpuReq, &c.Sidecar.CPURequest},
		{"sidecar-memory-request", *memReq, &c.Sidecar.MemoryRequest},
		{"sidecar-cpu-limit", *cpuLim, &c.Sidecar.CPULimit},
		{"sidecar-memory-limit", *memLim, &c.Sidecar.MemoryLimit},
	} {
		if q.in == "" {
			continue
		}
		v, sign, err := canonicalQuantity(q.in)
		if err != nil || sign <= 0 {
			return nil, bad(q.name, q.in, "must be a positive Kubernetes quantity such as 10m, 16Mi or 0.5, or empty for none")
		}
		*q.out = v
	}
	if c.ReconcileWindow, err = duration(*window, time.Second, 24*time.Hour); err != nil {
		return nil, bad("reconcile-window", *window, err.Error())
	}
	if c.ReconcileInterval, err = duration(*interval, 100*time.Millisecond, time.Hour); err != nil {
		return nil, bad("reconcile-interval", *interval, err.Error())
	}
	if *electionName == "" {
		return nil, bad("leader-election-lease-name", *electionName, "must name the reconciler's Lease")
	}
	if c.ShutdownDelay, err = duration(*delay, 0, time.Minute); err != nil {
		return nil, bad("shutdown-delay", *delay, err.Error())
	}
	if c.ShutdownTimeout, err = duration(*shutdown, 0, time.Hour); err != nil {
		return nil, bad("shutdown-timeout", *shutdown, err.Error())
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return nil, bad("log-level", c.LogLevel, "must be debug, info, warn or error")
	}
	switch c.LogFormat {
	case "json", "console":
	default:
		return nil, bad("log-format", c.LogFormat, "must be json or console")
	}
	if c.RedisPasswordFile != "" {
		b, err := os.ReadFile(c.RedisPasswordFile)
		if err != nil {
			// The error names the file, never its content.
			return nil, bad("redis-password-file", c.RedisPasswordFile, fmt.Sprintf("cannot be read: %v", errors.Unwrap(err)))
		}
		c.RedisPassword = strings.TrimRight(string(b), "\r\n")
		if c.RedisPassword == "" {
			return nil, bad("redis-password-file", c.RedisPasswordFile, "is empty; it must hold the Redis password")
		}
	}
	return c, nil
}

func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func validPort(s string, zeroOK bool) bool {
	n, err := strconv.Atoi(s)
	if err != nil {
		return false
	}
	return n <= 65535 && (n >= 1 || (zeroOK && n == 0))
}

func duration(s string, lo, hi time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d < lo || d > hi {
		return 0, fmt.Errorf("must be a Go duration from %s to %s", short(lo), short(hi))
	}
	return d, nil
}

func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintln(w, "Usage: prometheus-metrics-proxy-hook webhook [flags]")
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
