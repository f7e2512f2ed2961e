package kubetest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Issuer is the API server's --service-account-issuer.
const Issuer = "https://kubernetes.default.svc"

// BoundPod is the pod a ServiceAccount token is bound to.
type BoundPod struct {
	Namespace, ServiceAccount, ServiceAccountUID, Name, UID string
}

// SignServiceAccountToken mints a pod-bound ServiceAccount token with the
// API server's own signing key, as the TokenRequest API would, but with any
// lifetime: tests use it for tokens that expired long ago, which the API
// server never issues.
func (cp *ControlPlane) SignServiceAccountToken(pod BoundPod, audience string, issued, expires time.Time) (string, error) {
	key, err := cp.serviceAccountKey()
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", err
	}
	kid := sha256.Sum256(der)
	header := map[string]string{"alg": "RS256", "kid": base64.RawURLEncoding.EncodeToString(kid[:])}
	claims := map[string]any{
		"iss": Issuer, "aud": []string{audience},
		"sub": "system:serviceaccount:" + pod.Namespace + ":" + pod.ServiceAccount,
		"iat": issued.Unix(), "nbf": issued.Unix(), "exp": expires.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      pod.Namespace,
			"pod":            map[string]string{"name": pod.Name, "uid": pod.UID},
			"serviceaccount": map[string]string{"name": pod.ServiceAccount, "uid": pod.ServiceAccountUID},
		},
	}
	var parts [2]string
	for i, v := range []any{header, claims} {
		b, err := json.Marshal(v)
		if err != nil {
			return "", err
		}
		parts[i] = base64.RawURLEncoding.EncodeToString(b)
	}
	signed := parts[0] + "." + parts[1]
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		return "", fmt.Errorf("signing the token: %w", err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func (cp *ControlPlane) serviceAccountKey() (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(filepath.Join(cp.Dir, "pki", "service-account.key"))
	if err != nil {
		return nil, fmt.Errorf("reading the service account signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("the service account signing key is not PEM")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the service account signing key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("the service account signing key is not an RSA key")
	}
	return rk, nil
}
