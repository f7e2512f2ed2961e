package webhooktest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

// CertDir is a certificate directory laid out like a Kubernetes secret
// volume: tls.crt, tls.key and ca.crt are symlinks into "..data", itself a
// symlink to a timestamped directory that each update replaces atomically.
type CertDir struct {
	Dir string
	CA  *testpki.CA

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
	ca, err := testpki.NewCA()
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
