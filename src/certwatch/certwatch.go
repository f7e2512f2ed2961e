// Package certwatch keeps a TLS serving certificate and its CA bundle fresh
// from files on disk, for servers that must pick up a rotated certificate
// (cert-manager, Kubernetes secret volumes) without a restart.
//
// The files are polled: reading three small files once a second costs
// nothing, needs no inotify and sees every way a file can change, including
// the "..data" symlink swap with which the kubelet updates a secret volume.
// A new pair is used only once the certificate and the key match, so a
// rotation caught half-written keeps the old pair and no handshake fails.
package certwatch

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// File names in the certificate directory, as cert-manager writes them.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
	CAFile   = "ca.crt"
)

// DefaultInterval is how often the files are polled.
const DefaultInterval = time.Second

// Options configures a Watcher.
type Options struct {
	// Dir holds CertFile, KeyFile and CAFile.
	Dir string
	// Interval between polls; zero means DefaultInterval.
	Interval time.Duration
	Logger   zerolog.Logger
}

// Watcher serves the current certificate. It is safe for concurrent use.
type Watcher struct {
	opts Options

	cert atomic.Pointer[loaded]
	ca   atomic.Pointer[[]byte]

	// Only the polling goroutine touches these.
	lastCert, lastKey, lastCA []byte
	lastBadCA, lastBadPair    string

	reloads *prometheus.CounterVec
	expiry  *prometheus.Desc
}

type loaded struct {
	cert     *tls.Certificate
	notAfter time.Time
}

// New reads the files once. A missing or invalid pair is not an error: the
// watcher keeps polling and Ready reports false until a valid pair appears,
// since cert-manager may issue the certificate after the pod started.
func New(opts Options) *Watcher {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	const ns = "prometheus_metrics_proxy_hook"
	w := &Watcher{
		opts: opts,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "certificate_reloads_total",
			Help: "Reads of changed certificate files by result (ok, error: the old pair stays in use).",
		}, []string{"result"}),
		expiry: prometheus.NewDesc(ns+"_certificate_expiry_timestamp_seconds",
			"NotAfter of the certificate in use, as a Unix timestamp, by certificate (serving, ca).",
			[]string{"certificate"}, nil),
	}
	w.reloads.WithLabelValues("ok")
	w.reloads.WithLabelValues("error")
	w.poll()
	return w
}

// Run polls until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// Ready reports whether a serving certificate is loaded.
func (w *Watcher) Ready() bool { return w.cert.Load() != nil }

// GetCertificate is for tls.Config.GetCertificate.
func (w *Watcher) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if l := w.cert.Load(); l != nil {
		return l.cert, nil
	}
	return nil, fmt.Errorf("no serving certificate is loaded yet from %s", w.opts.Dir)
}

// CA returns the PEM of the CA bundle, nil when none was read. The slice
// must not be modified.
func (w *Watcher) CA() []byte {
	if p := w.ca.Load(); p != nil {
		return *p
	}
	return nil
}

// NotAfter is the expiry of the serving certificate in use (zero if none).
func (w *Watcher) NotAfter() time.Time {
	if l := w.cert.Load(); l != nil {
		return l.notAfter
	}
	return time.Time{}
}

// poll reads the files and swaps in what changed and is valid.
func (w *Watcher) poll() {
	certPEM, certErr := os.ReadFile(filepath.Join(w.opts.Dir, CertFile))
	keyPEM, keyErr := os.ReadFile(filepath.Join(w.opts.Dir, KeyFile))
	caPEM, caErr := os.ReadFile(filepath.Join(w.opts.Dir, CAFile))

	if caErr == nil && !bytes.Equal(caPEM, w.lastCA) {
		if _, err := firstCertificate(caPEM); err != nil {
			w.bad(&w.lastBadCA, string(caPEM), fmt.Errorf("%s: %w", CAFile, err))
		} else {
			w.lastCA, w.lastBadCA = caPEM, ""
			w.ca.Store(&caPEM)
			w.reloads.WithLabelValues("ok").Inc()
			w.opts.Logger.Info().Str("file", filepath.Join(w.opts.Dir, CAFile)).Msg("Loaded the CA bundle.")
		}
	}

	if err := errors.Join(certErr, keyErr); err != nil {
		if w.cert.Load() == nil {
			w.bad(&w.lastBadPair, "missing", err)
		}
		return
	}
	if bytes.Equal(certPEM, w.lastCert) && bytes.Equal(keyPEM, w.lastKey) {
		return
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Often a rotation caught between the two writes: the next poll
		// sees both files new.
		w.bad(&w.lastBadPair, string(certPEM)+string(keyPEM), fmt.Errorf("the pair in %s is not usable yet, the previous one stays in use: %w", w.opts.Dir, err))
		return
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			w.bad(&w.lastBadPair, string(certPEM), err)
			return
		}
		pair.Leaf = leaf
	}
	w.lastCert, w.lastKey, w.lastBadPair = certPEM, keyPEM, ""
	w.cert.Store(&loaded{cert: &pair, notAfter: leaf.NotAfter})
	w.reloads.WithLabelValues("ok").Inc()
	w.opts.Logger.Info().Str("dir", w.opts.Dir).Str("subject", leaf.Subject.String()).
		Time("not_after", leaf.NotAfter).Msg("Loaded the serving certificate.")
}

// bad logs a problem once per distinct content, not once per poll.
func (w *Watcher) bad(last *string, key string, err error) {
	if key == *last {
		return
	}
	*last = key
	w.reloads.WithLabelValues("error").Inc()
	w.opts.Logger.Error().Err(err).Msg("The certificate files could not be used; the last good certificate, if any, stays in use.")
}

func firstCertificate(pemBytes []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// Describe implements prometheus.Collector.
func (w *Watcher) Describe(ch chan<- *prometheus.Desc) {
	w.reloads.Describe(ch)
	ch <- w.expiry
}

// Collect implements prometheus.Collector.
func (w *Watcher) Collect(ch chan<- prometheus.Metric) {
	w.reloads.Collect(ch)
	if l := w.cert.Load(); l != nil {
		ch <- prometheus.MustNewConstMetric(w.expiry, prometheus.GaugeValue, float64(l.notAfter.Unix()), "serving")
	}
	if ca := w.CA(); ca != nil {
		if c, err := firstCertificate(ca); err == nil {
			ch <- prometheus.MustNewConstMetric(w.expiry, prometheus.GaugeValue, float64(c.NotAfter.Unix()), "ca")
		}
	}
}
