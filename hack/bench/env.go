package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

// env is everything the load scenarios run against.
type env struct {
	dir     string
	certDir string
	// redis has the production settings (appendfsync always); redisLax
	// the same with appendfsync everysec, to show what the disk costs.
	redis, redisLax *redistest.Cluster
	webhook         *webhookProc
	webhookLax      *webhookProc
	// webhookGOGC runs with GOGC lowered, against redis: what the garbage
	// collector's setting does to memory and CPU.
	webhookGOGC *webhookProc
	floors      map[string]*floorProc
}

type webhookProc struct {
	*proc
	addr, probe, passwordFile string
	redis                     *redistest.Cluster
}

type floorProc struct {
	*proc
	addr string
}

func (e *env) close() {
	if e.webhook != nil {
		e.webhook.stop()
	}
	if e.webhookLax != nil {
		e.webhookLax.stop()
	}
	if e.webhookGOGC != nil {
		e.webhookGOGC.stop()
	}
	for _, f := range e.floors {
		f.stop()
	}
	for _, c := range []*redistest.Cluster{e.redis, e.redisLax} {
		if c != nil {
			_ = c.Close()
		}
	}
}

func startEnv(dir, webhookBin, loadtestBin string, lax bool, gogc int) (*env, error) {
	e := &env{dir: dir, floors: map[string]*floorProc{}}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	var err error
	if e.certDir, err = writeCerts(filepath.Join(dir, "certs")); err != nil {
		return nil, err
	}
	if e.redis, err = redistest.Start(redistest.Options{Nodes: 3, Dir: filepath.Join(dir, "redis")}); err != nil {
		return nil, fmt.Errorf("starting Redis: %w", err)
	}
	if e.webhook, err = startWebhook(dir, "webhook", webhookBin, e.certDir, e.redis, nil); err != nil {
		return nil, err
	}
	if gogc > 0 {
		if e.webhookGOGC, err = startWebhook(dir, "webhook-gogc", webhookBin, e.certDir, e.redis, []string{"GOGC=" + strconv.Itoa(gogc)}); err != nil {
			return nil, err
		}
	}
	if lax {
		if e.redisLax, err = redistest.Start(redistest.Options{Nodes: 3, Dir: filepath.Join(dir, "redis-everysec"),
			ExtraArgs: []string{"--appendfsync", "everysec"}}); err != nil {
			return nil, fmt.Errorf("starting Redis (everysec): %w", err)
		}
		if e.webhookLax, err = startWebhook(dir, "webhook-everysec", webhookBin, e.certDir, e.redisLax, nil); err != nil {
			return nil, err
		}
	}
	for _, decode := range []string{"json", "none"} {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		p, err := startProc("floor-"+decode, filepath.Join(dir, "floor-"+decode+".log"), nil, loadtestBin,
			"floor", "--cert-dir", e.certDir, "--listen", addr, "--decode", decode)
		if err != nil {
			return nil, err
		}
		e.floors[decode] = &floorProc{proc: p, addr: addr}
		if err := waitTCP(p, addr, 10*time.Second); err != nil {
			return nil, err
		}
	}
	ok = true
	return e, nil
}

// writeCerts writes a CA and a serving certificate for 127.0.0.1 the way
// the chart's cert-manager issuer does.
func writeCerts(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	ca, err := testpki.NewCA()
	if err != nil {
		return "", err
	}
	certPEM, keyPEM, err := ca.Issue(24*time.Hour, "127.0.0.1", "localhost")
	if err != nil {
		return "", err
	}
	for name, content := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "ca.crt": ca.PEM} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func startWebhook(dir, name, bin, certDir string, redis *redistest.Cluster, env []string) (*webhookProc, error) {
	addrs := make([]string, 3)
	for i := range addrs {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	pw := filepath.Join(dir, name+"-redis-password")
	if err := os.WriteFile(pw, []byte(redis.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	p, err := startProc(name, filepath.Join(dir, name+".log"), env, bin,
		"--listen-address="+addrs[0], "--metrics-address="+addrs[1], "--probe-address="+addrs[2],
		"--cert-dir="+certDir, "--redis-addresses="+strings.Join(redis.Addrs(), ","),
		"--redis-password-file="+pw, "--sidecar-image=prometheus-metrics-proxy-hook:bench",
		"--lease-url=https://"+addrs[0], "--shutdown-delay=0s")
	if err != nil {
		return nil, err
	}
	w := &webhookProc{proc: p, addr: addrs[0], probe: addrs[2], passwordFile: pw, redis: redis}
	if err := waitHTTP(p, "http://"+addrs[2]+"/readyz", 30*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return w, nil
}
