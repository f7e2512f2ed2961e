package kubetest

import (
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

// ServingCert is a TLS serving certificate and key with the CA that signed
// it, all PEM encoded. The CA is what a client (or a webhook's caBundle)
// trusts.
type ServingCert struct {
	CertPEM   []byte
	KeyPEM    []byte
	CACertPEM []byte
}

// NewServingCert creates a fresh CA and a serving certificate signed by it,
// valid for two days, for the given hosts: IP addresses go into the IP SANs,
// anything else into the DNS SANs. A certificate for a webhook registered by
// URL needs a SAN equal to the URL's host, e.g. NewServingCert("127.0.0.1").
func NewServingCert(hosts ...string) (*ServingCert, error) {
	ca, err := testpki.NewCA()
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue(48*time.Hour, hosts...)
	if err != nil {
		return nil, err
	}
	return &ServingCert{CertPEM: certPEM, KeyPEM: keyPEM, CACertPEM: ca.PEM}, nil
}

// newServiceAccountKey returns an RSA key in PEM. The API server signs service
// account tokens with it and, given the same file as --service-account-key-file,
// verifies them with its public half; kube-controller-manager
// signs the tokens of service-account-token Secrets with it.
func newServiceAccountKey() ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("cannot generate the service account key: %w", err)
	}
	return testpki.PrivateKeyPEM(key)
}
