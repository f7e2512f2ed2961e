package webhooktest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// CA is a certificate authority for tests: it issues serving certificates
// the way cert-manager's CA issuer does in the chart.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, what clients (and the sidecar) trust.
	PEM []byte
}

// NewCA creates a CA valid for two days.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "webhooktest-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Issue creates a serving certificate for hosts (IP addresses go into the IP
// SANs, names into the DNS SANs) valid for validity, and returns the
// certificate and key PEM.
func (ca *CA) Issue(validity time.Duration, hosts ...string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the serving key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "webhooktest"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// Pool is a certificate pool that trusts only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err)
	}
	return n
}

// CertDir is a certificate directory laid out like a Kubernetes secret
// volume: tls.crt, tls.key and ca.crt are symlinks into "..data", itself a
// symlink to a timestamped directory that each update replaces atomically.
type CertDir struct {
	Dir string
	CA  *CA

	mu      sync.Mutex
	version int
	serving *x509.Certificate
}

// Hosts are the SANs of the serving certificates CertDir issues: what a
// client on this machine dials.
func Hosts() []string { return []string{"127.0.0.1", "localhost"} }

// NewCertDir creates a CA and a serving certificate for Hosts in a new
// temporary directory.
func NewCertDir(t testing.TB) *CertDir {
	t.Helper()
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	d := &CertDir{Dir: t.TempDir(), CA: ca}
	d.Rotate(t)
	return d
}

// Rotate issues a new serving certificate from the same CA and swaps it in
// atomically, as the kubelet does when cert-manager renews the secret.
func (d *CertDir) Rotate(t testing.TB) *x509.Certificate {
	t.Helper()
	certPEM, keyPEM, err := d.CA.Issue(24*time.Hour, Hosts()...)
	if err != nil {
		t.Fatal(err)
	}
	d.Write(t, map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "ca.crt": d.CA.PEM})
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.serving = cert
	d.mu.Unlock()
	return cert
}

// Serving is the serving certificate last written by Rotate.
func (d *CertDir) Serving() *x509.Certificate {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.serving
}

// Write replaces the directory's content with files in one atomic step:
// a new timestamped directory, then a rename of the "..data" symlink over
// the old one. Tests use it to write broken or half-updated content too.
func (d *CertDir) Write(t testing.TB, files map[string][]byte) {
	t.Helper()
	if err := d.write(files); err != nil {
		t.Fatal(err)
	}
}

func (d *CertDir) write(files map[string][]byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.version++
	name := "..v" + strconv.Itoa(d.version)
	dir := filepath.Join(d.Dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), content, 0o600); err != nil {
			return err
		}
	}
	tmp := filepath.Join(d.Dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(name, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(d.Dir, "..data")); err != nil {
		return err
	}
	for f := range files {
		link := filepath.Join(d.Dir, f)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", f), link); err != nil {
			return err
		}
	}
	if d.version > 1 {
		_ = os.RemoveAll(filepath.Join(d.Dir, "..v"+strconv.Itoa(d.version-1)))
	}
	return nil
}

// ClientTLS is a client configuration that trusts only the directory's CA.
func (d *CertDir) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: d.CA.Pool(), MinVersion: tls.VersionTLS12}
}
