package webhooktest_test

import (
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

func TestLifeCycle(t *testing.T) {
	redis := redistest.StartT(t, 1)
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password})
	addr, metrics := wh.Addr(), wh.MetricsURL()
	if wh.LeaseURL() != "https://"+addr {
		t.Fatalf("lease URL %s for %s", wh.LeaseURL(), addr)
	}

	// Kill, like a crash: the exit is not clean, and a start comes back on
	// the same ports.
	wh.Kill()
	if wh.Running() || wh.ExitCode() != -1 {
		t.Fatalf("after kill: running %v, exit %d", wh.Running(), wh.ExitCode())
	}
	if err := wh.Start(); err != nil {
		t.Fatal(err)
	}
	if err := wh.Restart(); err != nil {
		t.Fatal(err)
	}
	if wh.Addr() != addr || wh.MetricsURL() != metrics {
		t.Fatalf("ports changed: %s %s, were %s %s", wh.Addr(), wh.MetricsURL(), addr, metrics)
	}
	conn, err := tls.Dial("tcp", wh.Addr(), wh.Certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	resp, err := http.Get(wh.ReadyzURL())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	if code, err := wh.Stop(); code != 0 || err != nil {
		t.Fatalf("stop: %d %v", code, err)
	}
}
