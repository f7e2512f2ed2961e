package leaseapi_test

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// TestTokenFileIsReadOnEveryCall: the kubelet replaces the projected token
// in place; the next call sends the new one, and a missing file is an
// error worth retrying, not a call without a token.
func TestTokenFileIsReadOnEveryCall(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"released":true}`))
	}))
	defer srv.Close()
	client, err := leaseapi.NewClient(srv.URL, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "token")
	client.UseTokenFile(file)
	l := leaseapi.Lease{Namespace: "a", Key: "k", Holder: "0123456789abcdef0123456789abcdef"}
	for _, token := range []string{"first\n", "second"} {
		if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Release(context.Background(), l); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Release(context.Background(), l); err == nil || !leaseapi.Retryable(err) {
		t.Fatalf("a call without the token file: %v, want a retryable error", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != "Bearer first" || seen[1] != "Bearer second" {
		t.Fatalf("Authorization headers %q, want the file's content at each call", seen)
	}
}
