package testpki_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

func TestIssue(t *testing.T) {
	ca, err := testpki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		hosts []string
		err   string
	}{
		{"ip and name", []string{"127.0.0.1", "localhost"}, ""},
		{"service name", []string{"pmph.pmph-system.svc"}, ""},
		{"no host", nil, "at least one host"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(time.Hour, tc.hosts...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Fatalf("certificate and key do not pair: %v", err)
			}
			block, _ := pem.Decode(certPEM)
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range tc.hosts {
				if err := cert.VerifyHostname(h); err != nil {
					t.Errorf("host %s: %v", h, err)
				}
			}
			opts := x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			if _, err := cert.Verify(opts); err != nil {
				t.Fatalf("not verified by the CA: %v", err)
			}
			if ip := net.ParseIP(tc.hosts[0]); ip == nil && cert.Subject.CommonName != tc.hosts[0] {
				t.Errorf("common name %q, want %q", cert.Subject.CommonName, tc.hosts[0])
			}
		})
	}
}
