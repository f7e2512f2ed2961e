package metricsproxy

import "testing"

func TestAcceptable(t *testing.T) {
	const (
		om    = "application/openmetrics-text; version=1.0.0; charset=utf-8"
		text  = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"
		proto = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
		// What Prometheus 2.42 sends by default.
		prom242 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	)
	tests := []struct {
		name                   string
		accept, acceptEncoding string
		contentType, encoding  string
		want                   bool
	}{
		{"no headers take anything plain", "", "", text, "", true},
		{"no Accept-Encoding refuses gzip", "", "", text, "gzip", false},
		{"gzip asked, gzip stored", "", "gzip", text, "gzip", true},
		{"gzip asked, identity stored", "", "gzip", text, "", true},
		{"gzip with q=0 refuses gzip", "", "gzip;q=0", text, "gzip", false},
		{"wildcard encoding", "", "*", text, "gzip", true},
		{"encoding is case-insensitive", "", "GZIP", text, "gzip", true},
		{"prometheus default takes OpenMetrics", prom242, "gzip", om, "gzip", true},
		{"prometheus default takes protobuf through */*", prom242, "", proto, "", true},
		{"text only refuses OpenMetrics", "text/plain;version=0.0.4", "", om, "", false},
		{"text only takes text", "text/plain;version=0.0.4", "", text, "", true},
		{"type wildcard", "text/*", "", text, "", true},
		{"type wildcard of another type", "application/*", "", text, "", false},
		{"q=0 excludes", "text/plain;q=0,application/openmetrics-text", "", text, "", false},
		{"malformed q counts as 1", "text/plain;q=x", "", text, "", true},
		{"protobuf asked, text stored", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", "", text, "", false},
		{"media type is case-insensitive", "Text/Plain", "", "TEXT/PLAIN", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := acceptable(tt.accept, tt.acceptEncoding, tt.contentType, tt.encoding); got != tt.want {
				t.Errorf("acceptable(%q, %q, %q, %q) = %v, want %v", tt.accept, tt.acceptEncoding, tt.contentType, tt.encoding, got, tt.want)
			}
		})
	}
}
