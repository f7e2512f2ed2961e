package certwatch

import (
	"bytes"
	"crypto/tls"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

func serial(t *testing.T, w *Watcher) string {
	t.Helper()
	c, err := w.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

func TestReloadsOnSymlinkSwap(t *testing.T) {
	dir := webhooktest.NewCertDir(t)
	var logs bytes.Buffer
	w := New(Options{Dir: dir.Dir, Logger: zerolog.New(&logs)})
	if !w.Ready() {
		t.Fatalf("not ready: %s", logs.String())
	}
	first := dir.Serving().SerialNumber.String()
	if got := serial(t, w); got != first {
		t.Fatalf("serving %s, want %s", got, first)
	}
	if !bytes.Equal(w.CA(), dir.CA.PEM) {
		t.Fatal("CA bundle not loaded")
	}

	second := dir.Rotate(t).SerialNumber.String()
	w.poll()
	if got := serial(t, w); got != second {
		t.Fatalf("after rotation serving %s, want %s", got, second)
	}

	// A half-written rotation (new certificate, old key) keeps the pair
	// in use, and is logged once.
	certPEM, _, err := dir.CA.Issue(3600e9, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	_, oldKey, _ := dir.CA.Issue(3600e9, "127.0.0.1")
	dir.Write(t, map[string][]byte{"tls.crt": certPEM, "tls.key": oldKey, "ca.crt": []byte("garbage")})
	w.poll()
	w.poll()
	if got := serial(t, w); got != second {
		t.Fatalf("a mismatched pair replaced the certificate: %s", got)
	}
	if !bytes.Equal(w.CA(), dir.CA.PEM) {
		t.Fatal("an invalid CA bundle replaced the good one")
	}
	if n := strings.Count(logs.String(), "not usable yet"); n != 1 {
		t.Fatalf("want the bad pair logged once, got %d times:\n%s", n, logs.String())
	}

	// Missing files after a good load: the old pair stays.
	dir.Write(t, map[string][]byte{})
	w.poll()
	if got := serial(t, w); got != second {
		t.Fatalf("missing files replaced the certificate: %s", got)
	}
	third := dir.Rotate(t).SerialNumber.String()
	w.poll()
	if got := serial(t, w); got != third {
		t.Fatalf("recovery: serving %s, want %s", got, third)
	}
}

func TestNotReadyWithoutFiles(t *testing.T) {
	w := New(Options{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if w.Ready() {
		t.Fatal("ready without files")
	}
	if _, err := w.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Fatal("a certificate without files")
	}
}

func TestExpiryMetric(t *testing.T) {
	dir := webhooktest.NewCertDir(t)
	w := New(Options{Dir: dir.Dir, Logger: zerolog.Nop()})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, mf := range mfs {
		if mf.GetName() != "prometheus_metrics_proxy_hook_certificate_expiry_timestamp_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = int64(m.GetGauge().GetValue())
		}
	}
	if got["serving"] != dir.Serving().NotAfter.Unix() || got["ca"] != dir.CA.Cert.NotAfter.Unix() {
		t.Fatalf("expiry series %v, want serving %d and ca %d", got, dir.Serving().NotAfter.Unix(), dir.CA.Cert.NotAfter.Unix())
	}
}
