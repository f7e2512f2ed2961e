package charts

import (
	"strings"
	"testing"
)

// values.schema.json rejects each bad value, naming where and why.
func TestSchemaRejects(t *testing.T) {
	tests := []struct {
		name   string
		values string
		want   []string // substrings of Helm's error
	}{
		{"even Redis replicas", "redis: {replicas: 4}", []string{"/redis/replicas", "value must be one of 1, 3, 5"}},
		{"zero Redis replicas", "redis: {replicas: 0}", []string{"/redis/replicas", "value must be one of"}},
		{"Redis replicas as a string", "redis: {replicas: '3'}", []string{"/redis/replicas", "want integer"}},
		{"unknown failurePolicy", "webhook: {failurePolicy: Retry}", []string{"/webhook/failurePolicy", "value must be one of 'Fail', 'Ignore'"}},
		{"lower-case failurePolicy", "webhook: {failurePolicy: fail}", []string{"/webhook/failurePolicy"}},
		{"timeout above 30", "webhook: {timeoutSeconds: 31}", []string{"/webhook/timeoutSeconds", "maximum"}},
		{"timeout 0", "webhook: {timeoutSeconds: 0}", []string{"/webhook/timeoutSeconds", "minimum"}},
		{"zero webhook replicas", "webhook: {replicas: 0}", []string{"/webhook/replicas", "minimum"}},
		{"negative persistence size", "redis: {persistence: {size: -1Gi}}", []string{"/redis/persistence/size", "does not match pattern"}},
		{"zero persistence size", "redis: {persistence: {size: '0'}}", []string{"/redis/persistence/size"}},
		{"persistence size without number", "redis: {persistence: {size: Gi}}", []string{"/redis/persistence/size"}},
		{"negative sidecar memory", "sidecar: {resources: {requests: {memory: -16Mi}}}", []string{"/sidecar/resources/requests/memory"}},
		{"negative webhook cpu", "webhook: {resources: {requests: {cpu: -1}}}", []string{"/webhook/resources/requests/cpu"}},
		{"lease TTL without unit", "webhook: {leaseTTL: '30'}", []string{"/webhook/leaseTTL", "does not match pattern"}},
		{"lease TTL as a number", "webhook: {leaseTTL: 30}", []string{"/webhook/leaseTTL", "want string"}},
		{"lease TTL in days", "webhook: {leaseTTL: 1d}", []string{"/webhook/leaseTTL"}},
		{"malformed redis timeout", "webhook: {redisTimeout: 50 ms}", []string{"/webhook/redisTimeout"}},
		{"malformed scrape interval", "webhook: {scrapeInterval: forty}", []string{"/webhook/scrapeInterval"}},
		{"fractional shutdown timeout", "webhook: {shutdownTimeout: 1.5s}", []string{"/webhook/shutdownTimeout"}},
		{"GOGC not a percentage", "webhook: {gogc: \"half\"}", []string{"/webhook/gogc"}},
		{"GOGC zero", "webhook: {gogc: \"0\"}", []string{"/webhook/gogc"}},
		{"empty start delay", "redis: {persistence: {startDelay: ''}}", []string{"/redis/persistence/startDelay"}},
		{"start delay in ms", "redis: {persistence: {startDelay: 500ms}}", []string{"/redis/persistence/startDelay"}},
		{"malformed CA duration", "certManager: {ca: {duration: 5 years}}", []string{"/certManager/ca/duration"}},
		{"malformed scrape interval", "serviceMonitor: {interval: 30 seconds}", []string{"/serviceMonitor/interval"}},
		{"unknown top-level key", "replicas: 3", []string{"additional properties 'replicas' not allowed"}},
		{"misspelt nested key", "redis: {replica: 3}", []string{"/redis", "additional properties 'replica' not allowed"}},
		{"unknown image pull policy", "image: {pullPolicy: Sometimes}", []string{"/image/pullPolicy"}},
		{"malformed digest", "image: {digest: 'sha256:xyz'}", []string{"/image/digest"}},
		{"unknown no-quorum policy", "webhook: {noQuorumPolicy: ignore}", []string{"/webhook/noQuorumPolicy", "'deny', 'allow'"}},
		{"unknown log level", "webhook: {logLevel: trace}", []string{"/webhook/logLevel"}},
		{"unknown anti-affinity preset", "redis: {podAntiAffinity: strict}", []string{"/redis/podAntiAffinity"}},
		{"sidecar port out of range", "sidecar: {port: 70000}", []string{"/sidecar/port", "maximum"}},
		{"external address without port", "externalRedis: {addresses: [redis-a]}", []string{"/externalRedis/addresses/0", "does not match pattern"}},
		{"duplicate external addresses", "externalRedis: {addresses: ['a:1', 'a:1', 'b:1']}", []string{"/externalRedis/addresses", "items at 0 and 1 are equal"}},
		{"negative Redis maxUnavailable", "redis: {podDisruptionBudget: {maxUnavailable: -1}}", []string{"/redis/podDisruptionBudget/maxUnavailable"}},
		{"unknown mTLS mode", "istio: {metricsPortMtlsMode: DISABLE}", []string{"/istio/metricsPortMtlsMode"}},
		{"negative denial threshold", "prometheusRule: {fullDenialRateThreshold: -1}", []string{"/prometheusRule/fullDenialRateThreshold", "minimum"}},
		{"label value not a string", "commonLabels: {team: 1}", []string{"/commonLabels/team", "want string"}},
		{"uppercase fullnameOverride", "fullnameOverride: Hook", []string{"/fullnameOverride"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderChart(t, renderOpts{values: tc.values})
			if err == nil {
				t.Fatalf("values %q were accepted", tc.values)
			}
			msg := err.Error()
			if !strings.Contains(msg, "values don't meet the specifications of the schema") {
				t.Errorf("not a schema error: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// Good values pass the schema.
func TestSchemaAccepts(t *testing.T) {
	for _, v := range []string{
		"redis: {replicas: 5}",
		"redis: {replicas: 1}",
		"webhook: {leaseTTL: 1m30s, redisTimeout: 0.5s, scrapeInterval: 2m, shutdownTimeout: 1m5s}",
		"webhook: {gogc: \"off\"}",
		"webhook: {gogc: \"\"}",
		"redis: {persistence: {size: 512Mi, startDelay: 2h}}",
		"sidecar: {resources: {limits: {cpu: 250m, memory: ''}}}",
		"webhook: {podDisruptionBudget: {minAvailable: 50%}}",
		"serviceMonitor: {interval: 1m, scrapeTimeout: 15s}",
		"redis: {enabled: false}\nexternalRedis: {addresses: ['[fd00::1]:6379', '10.0.0.2:6379', 'redis-c.corp:7000'], existingSecret: redis}",
		"webhook: {failurePolicy: Ignore, timeoutSeconds: 30}",
	} {
		if _, err := renderChart(t, renderOpts{values: v}); err != nil {
			t.Errorf("values %q rejected: %v", v, err)
		}
	}
}

// What the schema cannot express (or what an install with
// --skip-schema-validation lets through) the templates refuse with a message.
func TestTemplateFailures(t *testing.T) {
	tests := []struct {
		name   string
		values string
		want   string
	}{
		{"even Redis replicas", "redis: {replicas: 4}", "redis.replicas must be odd (1, 3, 5, ...) so that a majority quorum exists; got 4"},
		{"even external nodes", "redis: {enabled: false}\nexternalRedis: {addresses: ['a:1', 'b:1']}", "externalRedis.addresses must list an odd number of nodes so that a majority quorum exists; got 2"},
		{"no external nodes", "redis: {enabled: false}", "externalRedis.addresses must list the Redis nodes (host:port) when redis.enabled is false"},
		{"both Redis kinds", "externalRedis: {addresses: ['a:1']}", "redis.enabled and externalRedis.addresses are mutually exclusive"},
		{"two external passwords", "redis: {enabled: false}\nexternalRedis: {addresses: ['a:1'], password: p, existingSecret: s}", "externalRedis.password and externalRedis.existingSecret are mutually exclusive"},
		{"no cert-manager, no certificate", "certManager: {enabled: false}", "certManager.enabled is false: set tls.existingSecret (tls.crt, tls.key, ca.crt) and tls.caBundle"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderChart(t, renderOpts{values: tc.values, skipSchema: true})
			if err == nil {
				t.Fatalf("values %q were accepted", tc.values)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}
